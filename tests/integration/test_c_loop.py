"""The session tests again with the reactor iterating in C, as under ``twistd pgpool``.

``fastpoll`` forwards attached sessions' chunks without Twisted; everything a
session does (copy both ways, flow control against a slow reader, cancel,
reuse and reset, idle limits, servers dying, TLS on either leg) must behave exactly as on
Twisted's own path.  These classes rerun those tests with the C loop on, and
check that sessions really were forwarded by it.
"""

from __future__ import annotations

import psycopg
from twisted.internet import defer, reactor
from twisted.internet.threads import blockingCallFromThread

from pgpool_tw.session.frontend import FrontendProtocol
from tests.integration import test_limits, test_sessions, test_tls
from tests.integration.harness import PoolerTestCase


def _on_c_loop(case: type[PoolerTestCase]) -> type[PoolerTestCase]:
    return type("CLoop" + case.__name__, (case,), {"c_loop": True, "__module__": __name__})


CLoopStartupTests = _on_c_loop(test_sessions.StartupTests)
CLoopReuseTests = _on_c_loop(test_sessions.ReuseTests)
CLoopCancelTests = _on_c_loop(test_sessions.CancelTests)
CLoopRelayTests = _on_c_loop(test_sessions.RelayTests)
CLoopFailureTests = _on_c_loop(test_sessions.FailureTests)
CLoopLimitsTests = _on_c_loop(test_limits.LimitsTests)
# TLS legs are never forwarded in C: their events must come back to Twisted intact.
CLoopClientLegTests = _on_c_loop(test_tls.ClientLegTests)
CLoopServerLegTests = _on_c_loop(test_tls.ServerLegTests)


class ForwardedInCTests(PoolerTestCase):
    c_loop = True

    @defer.inlineCallbacks
    def test_session_forwarded_by_the_c_loop(self):
        """An attached plain-socket session is registered with the C loop, which forwards it."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        seen: list[int] = []

        def relays() -> list[FrontendProtocol]:
            return [c for c in service.factory.clients if c._relay is not None]

        def run() -> int:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                for i in range(50):
                    conn.execute("select %s", (i,)).fetchone()
                # Read in the reactor's thread, between this client's queries.
                seen.append(len(blockingCallFromThread(reactor, relays)))
                seen.append(blockingCallFromThread(reactor, lambda: relays()[0]._relay.received))
                return int(conn.execute("select 42").fetchone()[0])

        self.assertEqual((yield self.in_thread(run)), 42)
        self.assertEqual(seen[0], 1)
        self.assertGreaterEqual(seen[1], 50)
