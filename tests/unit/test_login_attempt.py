"""checks/login.py: a LoginAttempt given up while it is still connecting ends once."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from pgpool_tw.checks.login import LoginAttempt
from pgpool_tw.config.settings import BackendNode


class LoginAttemptTests(TestCase):
    def test_cancel_while_connecting_fires_once(self) -> None:
        """Cancelling makes the connector report a failed connection at once; the
        attempt is already over then, and says why it stopped."""
        port: Any = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        node = BackendNode(0, "127.0.0.1", port.getHost().port)
        attempt = LoginAttempt(reactor, node, "nobody", "postgres", lambda: None, 5.0, 5.0)
        attempt.cancel()
        self.assertEqual(self.successResultOf(attempt.done), "the check stopped")
        attempt.cancel()  # twice is harmless
