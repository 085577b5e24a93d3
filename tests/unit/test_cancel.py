"""pgpool_tw.session.cancel: the pooler's own cancel keys and the sessions they point to."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.session.cancel import CancelRegistry, new_secret


class Session:
    """A stand-in for a live client session."""


class CancelRegistryTests(SynchronousTestCase):
    def test_register_and_lookup(self) -> None:
        """A registered (pid, secret) looks up to its session."""
        registry: CancelRegistry[Session] = CancelRegistry()
        session = Session()
        registry.register(1234, -5678, session)
        self.assertIs(registry.lookup(1234, -5678), session)
        self.assertEqual(len(registry), 1)

    def test_wrong_key(self) -> None:
        """A known pid with the wrong secret finds nothing."""
        registry: CancelRegistry[Session] = CancelRegistry()
        registry.register(1234, 99, Session())
        for key in (98, 100, -99, 0):
            self.assertIsNone(registry.lookup(1234, key), key)

    def test_unknown_pid(self) -> None:
        """An unknown pid finds nothing, even with a registered secret."""
        registry: CancelRegistry[Session] = CancelRegistry()
        registry.register(1234, 99, Session())
        self.assertIsNone(registry.lookup(4321, 99))
        self.assertIsNone(CancelRegistry().lookup(1, 1))

    def test_unregister(self) -> None:
        """After its session unregisters, a key no longer finds it."""
        registry: CancelRegistry[Session] = CancelRegistry()
        session = Session()
        registry.register(1234, 99, session)
        registry.unregister(1234, session)
        self.assertIsNone(registry.lookup(1234, 99))
        self.assertEqual(len(registry), 0)

    def test_unregister_by_other_session_ignored(self) -> None:
        """Another session unregistering the same pid leaves the live entry alone."""
        registry: CancelRegistry[Session] = CancelRegistry()
        old, new = Session(), Session()
        registry.register(1234, 1, old)
        registry.register(1234, 2, new)  # the pooled server now serves another client
        registry.unregister(1234, old)  # the old client's late cleanup
        self.assertIs(registry.lookup(1234, 2), new)
        self.assertIsNone(registry.lookup(1234, 1))
        self.assertEqual(len(registry), 1)

    def test_unregister_unknown_pid(self) -> None:
        """Unregistering a pid that was never registered does nothing."""
        registry: CancelRegistry[Session] = CancelRegistry()
        registry.register(1, 1, Session())
        registry.unregister(2, Session())
        self.assertEqual(len(registry), 1)

    def test_out_of_range_key(self) -> None:
        """A key outside signed Int32 finds nothing instead of raising."""
        registry: CancelRegistry[Session] = CancelRegistry()
        registry.register(1234, 2**31 - 1, Session())
        registry.register(5, -(2**31), Session())
        for key in (2**31, -(2**31) - 1, 2**32 + 2**31 - 1, 2**64):
            self.assertIsNone(registry.lookup(1234, key), key)
        self.assertIsNone(registry.lookup(5, 2**31))
        self.assertIsNone(registry.lookup(999, 2**40))

    def test_extreme_keys(self) -> None:
        """The smallest and largest signed Int32 secrets both work."""
        registry: CancelRegistry[Session] = CancelRegistry()
        low, high = Session(), Session()
        registry.register(1, -(2**31), low)
        registry.register(2, 2**31 - 1, high)
        self.assertIs(registry.lookup(1, -(2**31)), low)
        self.assertIs(registry.lookup(2, 2**31 - 1), high)

    def test_sessions_kept_apart(self) -> None:
        """Each pid's key finds its own session only."""
        registry: CancelRegistry[Session] = CancelRegistry()
        one, two = Session(), Session()
        registry.register(1, 11, one)
        registry.register(2, 22, two)
        self.assertIs(registry.lookup(1, 11), one)
        self.assertIs(registry.lookup(2, 22), two)
        self.assertIsNone(registry.lookup(1, 22))
        self.assertIsNone(registry.lookup(2, 11))


class NewSecretTests(SynchronousTestCase):
    def test_signed_int32(self) -> None:
        """new_secret returns ints within the signed Int32 range."""
        for _ in range(200):
            secret = new_secret()
            self.assertIsInstance(secret, int)
            self.assertTrue(-(2**31) <= secret < 2**31, secret)

    def test_negative_values_occur(self) -> None:
        """new_secret uses the whole signed range, negatives included."""
        secrets_ = [new_secret() for _ in range(200)]
        self.assertTrue(any(s < 0 for s in secrets_))
        self.assertTrue(any(s >= 0 for s in secrets_))

    def test_varies(self) -> None:
        """Successive secrets differ."""
        self.assertGreater(len({new_secret() for _ in range(50)}), 45)
