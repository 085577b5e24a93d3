"""Transaction pooling's servers (pool/leases.py): real server connections over a
StringTransport, time on a task.Clock, no reactor."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.pool import backend as b
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.key import PoolKey, pool_key
from pgpool_tw.pool.leases import Key, Leases, LeaseStats, Ticket
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.stats.counters import Totals

NODE = BackendNode(0, "127.0.0.1", 5432)
ALICE = StartupMessage((("user", "alice"), ("database", "shop")))
BOB = StartupMessage((("user", "bob"), ("database", "shop")))
A = pool_key(0, ALICE)
B = pool_key(0, BOB)
STARTUPS = {A: ALICE, B: BOB}


class Owner:
    """What a session's ServerLogin is to a server while it logs in: here, nobody."""

    def server_forward(self, server: BackendProtocol, raw: bytes) -> None:
        pass

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        pass

    def server_ready(self, server: BackendProtocol) -> None:
        pass

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        pass

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        pass

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        pass


class Client:
    """A transaction-mode client as the Leases sees it: what it was given, in order."""

    def __init__(self, rig: Rig, key: PoolKey = A, verified: bool = True) -> None:
        self.rig = rig
        self.key = key
        self.verified = verified
        self.given: list[Optional[BackendProtocol]] = []
        self.expired_count = 0
        self.ticket: Optional[Ticket] = None

    def got(self, server: Optional[BackendProtocol]) -> None:
        self.given.append(server)
        if server is not None:
            server.attach(self.rig, lambda data: None)  # the session keeps it now

    def expired(self) -> None:
        self.expired_count += 1

    def lease(self) -> Client:
        self.ticket = self.rig.leases.lease(self.key, self.got, self.expired, self.verified)
        return self

    @property
    def server(self) -> Optional[BackendProtocol]:
        return self.given[-1] if self.given else None


class Rig:
    """A Leases with a settable config, a clock, and a supply of logged-in servers."""

    def __init__(self, **settings: Any) -> None:
        self.config = dataclasses.replace(Config(), **settings)
        self.clock = Clock()
        self.totals = Totals()
        self.leases = Leases(lambda: self.config, self.clock, self.totals)
        self.opened_for: list[Key] = []
        self.leases.opener = self.opened_for.append
        self.lost: list[BackendProtocol] = []

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        """The session's side of a lent server closing: it tells the Leases."""
        self.lost.append(server)
        self.leases.forget(server)

    def reload(self, **settings: Any) -> None:
        self.config = dataclasses.replace(self.config, **settings)

    def new_server(self, key: PoolKey = A, password: bool = False) -> BackendProtocol:
        server = BackendProtocol(NODE, STARTUPS[key], self.clock)
        server.owner = Owner()
        server.makeConnection(StringTransport())
        if password:
            server.dataReceived(m.message(b"R", m.INT32.pack(m.AUTH_CLEARTEXT)))
        server.dataReceived(
            m.message(b"R", m.INT32.pack(m.AUTH_OK))
            + m.message(b"K", m.INT32.pack(4242) + m.INT32.pack(777))
            + m.ready_for_query(m.IDLE)
        )
        assert server.state == b.READY and server.asked_password == password
        return server

    def open_for(self, client: Client, password: bool = False) -> BackendProtocol:
        """The client was given a place (got(None)): it opens a server and uses it."""
        assert client.given and client.given[-1] is None
        server = self.new_server(client.key, password)
        self.leases.opened(server)
        client.got(server)
        return server

    def member(self, key: PoolKey = A, password: bool = False) -> BackendProtocol:
        """An idle member of ``key``: a client opened it and its transaction ended."""
        (server,) = self.members(key, password)
        return server

    def members(self, key: PoolKey, *passwords: bool) -> list[BackendProtocol]:
        """New idle members of ``key``, released in order (the last is the most recent)."""
        clients = [Client(self, key).lease() for _ in passwords]
        servers = [self.open_for(c, p) for c, p in zip(clients, passwords)]
        for server in servers:
            self.leases.release(server, True)
        return servers

    def stats(self, key: PoolKey = A) -> LeaseStats:
        return self.leases.stats().get(key, LeaseStats(0, 0, 0, 0, 0.0))

    def count(self, key: PoolKey = A) -> int:
        s = self.stats(key)
        return s.active + s.idle + s.opening


def closed(server: BackendProtocol) -> bool:
    """The Leases closed it politely: Terminate sent and the transport closing."""
    transport = server.transport
    return (
        server.state == b.CLOSED
        and transport.disconnecting
        and transport.value().endswith(m.terminate())
    )


def lose(server: BackendProtocol) -> None:
    """The server goes away on its own (its connectionLost runs)."""
    server.connectionLost(Failure(ConnectionDone()))


class LeaseTests(SynchronousTestCase):
    def test_idle_server_lent_at_once_most_recent_first(self) -> None:
        """An idle server is lent at once, the most recently released first."""
        rig = Rig()
        c1, c2 = Client(rig).lease(), Client(rig).lease()
        s1, s2 = rig.open_for(c1), rig.open_for(c2)
        rig.leases.release(s1, True)
        rig.leases.release(s2, True)
        self.assertEqual((s1.state, s2.state), (b.IDLE, b.IDLE))
        self.assertIs(s2.keeper, rig.leases)
        client = Client(rig).lease()
        self.assertEqual((client.ticket, client.given), (None, [s2]))
        self.assertEqual(rig.stats(), LeaseStats(1, 1, 0, 0, 0.0))

    def test_under_the_limit_a_place_to_open_one(self) -> None:
        """With no idle server and room under default_pool_size, got(None) and one counted."""
        rig = Rig(default_pool_size=2)
        client = Client(rig).lease()
        self.assertEqual((client.ticket, client.given), (None, [None]))
        self.assertEqual(rig.stats(), LeaseStats(0, 0, 1, 0, 0.0))
        server = rig.open_for(client)
        self.assertEqual(rig.stats(), LeaseStats(1, 0, 0, 0, 0.0))
        self.assertTrue(rig.leases.is_member(server))

    def test_at_the_limit_clients_wait_and_are_served_in_arrival_order(self) -> None:
        """Past default_pool_size clients wait; released servers go to them in arrival order,
        and their wait is added to the key's wait_time."""
        rig = Rig(default_pool_size=1)
        first = Client(rig).lease()
        server = rig.open_for(first)
        waiters = []
        for _ in range(3):
            waiters.append(Client(rig).lease())
            rig.clock.advance(1)
        for w in waiters:
            self.assertIsInstance(w.ticket, Ticket)
            self.assertEqual(w.given, [])
        self.assertEqual(rig.stats(), LeaseStats(1, 0, 0, 3, 3.0))
        rig.leases.release(server, True)
        self.assertEqual([w.given for w in waiters], [[server], [], []])
        self.assertEqual(rig.totals.of(A).wait_time, 3.0)
        rig.leases.release(server, True)
        self.assertEqual([w.given for w in waiters], [[server], [server], []])
        self.assertEqual(rig.totals.of(A).wait_time, 5.0)
        self.assertEqual(rig.stats(), LeaseStats(1, 0, 0, 1, 1.0))

    def test_new_client_queues_behind_waiters(self) -> None:
        """A client arriving while others wait waits behind them, even if room appears
        (a reload raised the limit): the queue is served first, in order."""
        rig = Rig(default_pool_size=1)
        rig.open_for(Client(rig).lease())
        early = Client(rig).lease()
        rig.reload(default_pool_size=2)
        late = Client(rig).lease()
        self.assertEqual((early.given, late.given), ([None], []))
        assert early.ticket is not None and late.ticket is not None
        self.assertEqual((early.ticket.waiting, late.ticket.waiting), (False, True))

    def test_keys_are_separate(self) -> None:
        """One key's released server never goes to another key's waiter; limits are per key."""
        rig = Rig(default_pool_size=1)
        a_server = rig.open_for(Client(rig, A).lease())
        a_waiter = Client(rig, A).lease()
        b_client = Client(rig, B).lease()
        self.assertEqual(b_client.given, [None])
        b_server = rig.open_for(b_client)
        rig.leases.release(b_server, True)
        self.assertEqual(a_waiter.given, [])
        rig.leases.release(a_server, True)
        self.assertEqual(a_waiter.given, [a_server])

    def test_withdrawn_waiter_is_skipped(self) -> None:
        """A waiter that left is never served; the next in line is."""
        rig = Rig(default_pool_size=1)
        server = rig.open_for(Client(rig).lease())
        gone, next_one = Client(rig).lease(), Client(rig).lease()
        assert gone.ticket is not None
        rig.leases.withdraw(gone.ticket)
        rig.leases.withdraw(gone.ticket)  # twice: nothing more happens
        self.assertEqual(rig.stats().waiting, 1)
        rig.leases.release(server, True)
        self.assertEqual((gone.given, next_one.given), ([], [server]))


class ReleaseTests(SynchronousTestCase):
    def test_unclean_release_closes_and_lets_a_waiter_open_one(self) -> None:
        """An unclean release closes the server; its place goes to the first waiter."""
        rig = Rig(default_pool_size=1)
        server = rig.open_for(Client(rig).lease())
        waiter = Client(rig).lease()
        rig.leases.release(server, False)
        self.assertTrue(closed(server))
        self.assertEqual(waiter.given, [None])
        self.assertEqual(rig.stats(), LeaseStats(0, 0, 1, 0, 0.0))
        self.assertFalse(rig.leases.is_member(server))

    def test_stale_or_lost_server_is_not_kept(self) -> None:
        """A stale server closes on release; a lost one is only taken off the count."""
        rig = Rig(default_pool_size=2)
        stale = rig.open_for(Client(rig).lease())
        gone = rig.open_for(Client(rig).lease())
        stale.stale = True
        rig.leases.release(stale, True)
        self.assertTrue(closed(stale))
        lose(gone)  # its session hears it and forgets it, then releases it too
        rig.leases.release(gone, True)
        self.assertFalse(gone.transport.value().endswith(m.terminate()))
        self.assertEqual(rig.count(), 0)

    def test_no_waiter_parks_idle(self) -> None:
        """With nobody waiting a clean server parks idle, watched by the Leases."""
        rig = Rig()
        server = rig.member()
        self.assertEqual((server.state, server.keeper), (b.IDLE, rig.leases))
        self.assertEqual(rig.stats(), LeaseStats(0, 1, 0, 0, 0.0))

    def test_stale_idle_server_closed_at_lease(self) -> None:
        """An idle server whose node failed over is closed when met, never lent."""
        rig = Rig(default_pool_size=2)
        older, stale = rig.members(A, False, False)
        stale.stale = True
        self.assertEqual(Client(rig).lease().given, [older])
        self.assertTrue(closed(stale))
        self.assertEqual(rig.stats(), LeaseStats(1, 0, 0, 0, 0.0))

    def test_second_release_of_an_idle_server_changes_nothing(self) -> None:
        """Releasing a parked server again leaves it parked and watched, counted once."""
        rig = Rig()
        server = rig.member()
        rig.leases.release(server, True)
        rig.leases.release(server, False)
        self.assertEqual((server.state, server.keeper), (b.IDLE, rig.leases))
        self.assertEqual(rig.count(), 1)

    def test_adoption_under_the_limit(self) -> None:
        """A server a client logged in with joins the key when the key has room."""
        rig = Rig(default_pool_size=1)
        server = rig.new_server()
        self.assertFalse(rig.leases.is_member(server))
        rig.leases.release(server, True)
        self.assertTrue(rig.leases.is_member(server))
        self.assertEqual(rig.stats(), LeaseStats(0, 1, 0, 0, 0.0))
        self.assertEqual(Client(rig).lease().given, [server])

    def test_adoption_refused_at_the_limit(self) -> None:
        """At default_pool_size (places being opened count) a client's own server closes."""
        rig = Rig(default_pool_size=1)
        Client(rig).lease()  # a place, opening
        server = rig.new_server()
        rig.leases.release(server, True)
        self.assertTrue(closed(server))
        self.assertEqual(rig.stats(), LeaseStats(0, 0, 1, 0, 0.0))

    def test_unclean_stranger_is_closed_and_not_counted(self) -> None:
        """An unclean server that is no member closes and changes no count, no waiter."""
        rig = Rig(default_pool_size=1)
        rig.open_for(Client(rig).lease())
        waiter = Client(rig).lease()
        stranger = rig.new_server()
        rig.leases.release(stranger, False)
        self.assertTrue(closed(stranger))
        self.assertEqual(waiter.given, [])
        self.assertEqual(rig.count(), 1)

    def test_adopted_server_serves_a_waiter(self) -> None:
        """An adopted server goes straight to the first waiter (a reload made room)."""
        rig = Rig(default_pool_size=1)
        rig.open_for(Client(rig).lease())
        waiter = Client(rig).lease()
        rig.reload(default_pool_size=2)
        stranger = rig.new_server()
        rig.leases.release(stranger, True)
        self.assertEqual(waiter.given, [stranger])
        self.assertEqual(rig.stats(), LeaseStats(2, 0, 0, 0, 0.0))

    def test_limit_lowered_by_reload_shrinks_on_release(self) -> None:
        """Past default + reserve (a reload lowered it) a released server closes."""
        rig = Rig(default_pool_size=2)
        s1 = rig.open_for(Client(rig).lease())
        s2 = rig.open_for(Client(rig).lease())
        rig.reload(default_pool_size=1)
        rig.leases.release(s1, True)
        rig.leases.release(s2, True)
        self.assertTrue(closed(s1))
        self.assertEqual(s2.state, b.IDLE)
        self.assertEqual(rig.count(), 1)

    def test_closing_closes_what_comes_back_and_opens_nothing(self) -> None:
        """After close_all a released server closes; its place goes to no waiter."""
        rig = Rig(default_pool_size=1, min_pool_size=1)
        server = rig.open_for(Client(rig).lease())
        waiter = Client(rig).lease()
        rig.leases.close_all()
        rig.leases.release(server, True)
        self.assertTrue(closed(server))
        self.assertEqual(waiter.given, [])
        rig.leases.tick()
        self.assertEqual(rig.opened_for, [])


class PasswordTests(SynchronousTestCase):
    """A server that asked its first client for a password goes only to verified clients."""

    def test_unverified_client_skips_such_idle_servers(self) -> None:
        """An unverified client gets a plain idle server, or a place, never a password one."""
        rig = Rig(default_pool_size=3)
        plain, guarded = rig.members(A, False, True)
        self.assertEqual(Client(rig, verified=False).lease().given, [plain])
        self.assertEqual(Client(rig, verified=False).lease().given, [None])
        self.assertEqual(Client(rig, verified=True).lease().given, [guarded])

    def test_full_with_only_unusable_idle_servers(self) -> None:
        """At the limit with only password servers idle, an unverified client's lease closes
        the least recently used of them and gives the client its place."""
        rig = Rig(default_pool_size=2)
        old, new = rig.members(A, True, True)
        client = Client(rig, verified=False).lease()
        self.assertEqual(client.given, [None])
        self.assertTrue(closed(old))
        self.assertEqual(new.state, b.IDLE)
        self.assertEqual(rig.stats(), LeaseStats(0, 1, 1, 0, 0.0))

    def test_unverified_waiter_skipped_not_dropped(self) -> None:
        """A released password server passes over an unverified waiter to a verified one;
        the unverified one keeps its turn for the next plain server."""
        rig = Rig(default_pool_size=2)
        guarded = rig.open_for(Client(rig).lease(), password=True)
        plain = rig.open_for(Client(rig).lease())
        unverified = Client(rig, verified=False).lease()
        verified = Client(rig).lease()
        rig.leases.release(guarded, True)
        self.assertEqual((unverified.given, verified.given), ([], [guarded]))
        rig.leases.release(plain, True)
        self.assertEqual(unverified.given, [plain])

    def test_no_waiter_may_use_it(self) -> None:
        """When no waiter may use a released server it closes and the first waiter opens one."""
        rig = Rig(default_pool_size=1)
        guarded = rig.open_for(Client(rig).lease(), password=True)
        first = Client(rig, verified=False).lease()
        second = Client(rig, verified=False).lease()
        rig.leases.release(guarded, True)
        self.assertTrue(closed(guarded))
        self.assertEqual((first.given, second.given), ([None], []))
        self.assertEqual(rig.stats(), LeaseStats(0, 0, 1, 1, 0.0))


class LossTests(SynchronousTestCase):
    """A closed member takes exactly one off its key's count, whatever state it was in."""

    def test_idle_member_lost(self) -> None:
        """An idle server going away is taken off the count once (its keeper hears it)."""
        rig = Rig()
        server = rig.member()
        lose(server)
        self.assertEqual(rig.count(), 0)
        self.assertFalse(rig.leases.is_member(server))

    def test_lent_member_lost_lets_a_waiter_open(self) -> None:
        """A lent server lost: the session's forget frees its place for the first waiter,
        and a later release or forget of it changes nothing."""
        rig = Rig(default_pool_size=1)
        client = Client(rig).lease()
        server = rig.open_for(client)
        waiter = Client(rig).lease()
        lose(server)  # the session (rig) is its keeper: it calls forget
        self.assertEqual(rig.lost, [server])
        self.assertEqual(waiter.given, [None])
        rig.leases.forget(server)
        rig.leases.release(server, True)
        self.assertEqual(rig.stats(), LeaseStats(0, 0, 1, 0, 0.0))

    def test_lost_after_handover_to_a_waiter(self) -> None:
        """A server handed from one client to a waiter, then lost, is counted off once."""
        rig = Rig(default_pool_size=1)
        server = rig.open_for(Client(rig).lease())
        waiter = Client(rig).lease()
        rig.leases.release(server, True)
        self.assertEqual(waiter.given, [server])
        lose(server)
        self.assertEqual(rig.count(), 0)

    def test_open_failed_frees_the_place(self) -> None:
        """A place whose server never opened is given back; the next waiter may open one."""
        rig = Rig(default_pool_size=1)
        opener = Client(rig).lease()
        waiter = Client(rig).lease()
        self.assertEqual(opener.given, [None])
        rig.leases.open_failed(A)
        self.assertEqual(waiter.given, [None])
        rig.leases.open_failed(A)
        rig.leases.open_failed(A)  # no place left to give back: nothing happens
        self.assertEqual(rig.count(), 0)

    def test_opened_server_closed_before_release(self) -> None:
        """A server opened for a place that closes before its transaction ends: once."""
        rig = Rig(default_pool_size=1)
        client = Client(rig).lease()
        server = rig.new_server()
        rig.leases.opened(server)  # not attached yet: nobody watches it but the owner
        lose(server)
        rig.leases.release(server, False)
        self.assertEqual(rig.count(), 0)
        self.assertEqual(client.given, [None])

    def test_closed_by_each_housekeeper(self) -> None:
        """Servers closed by retire, close_idle and server_idle_timeout each come off once."""
        rig = Rig(default_pool_size=4)
        servers = [rig.open_for(Client(rig).lease()) for _ in range(4)]
        for server in servers:
            rig.leases.release(server, True)
        rig.leases.retire(lambda s: s is servers[0])
        self.assertEqual(rig.count(), 3)
        self.assertEqual(rig.leases.close_idle(), 3)
        self.assertEqual(rig.count(), 0)
        self.assertTrue(all(closed(s) for s in servers))
        for server in servers:
            lose(server)  # their connectionLost comes later: nobody is told
        self.assertEqual(rig.count(), 0)


class TimerTests(SynchronousTestCase):
    def test_query_wait_timeout(self) -> None:
        """A client waiting query_wait_timeout is taken out of the queue and told, once."""
        rig = Rig(default_pool_size=1, query_wait_timeout=5)
        server = rig.open_for(Client(rig).lease())
        first = Client(rig).lease()
        rig.clock.advance(2)
        second = Client(rig).lease()
        rig.clock.advance(2.9)
        rig.leases.tick()
        self.assertEqual((first.expired_count, second.expired_count), (0, 0))
        rig.clock.advance(0.1)
        rig.leases.tick()
        rig.leases.tick()
        self.assertEqual((first.expired_count, second.expired_count), (1, 0))
        rig.leases.release(server, True)
        self.assertEqual((first.given, second.given), ([], [server]))

    def test_query_wait_timeout_zero_waits_forever(self) -> None:
        """query_wait_timeout = 0: a waiting client is never expired."""
        rig = Rig(default_pool_size=1, query_wait_timeout=0)
        rig.open_for(Client(rig).lease())
        waiter = Client(rig).lease()
        rig.clock.advance(1e6)
        rig.leases.tick()
        self.assertEqual((waiter.expired_count, rig.stats().waiting), (0, 1))

    def test_reserve_after_reserve_pool_timeout(self) -> None:
        """A client waiting reserve_pool_timeout may open one of reserve_pool_size more,
        never past default + reserve; a later arrival still waits."""
        rig = Rig(default_pool_size=1, reserve_pool_size=1, reserve_pool_timeout=5)
        rig.open_for(Client(rig).lease())
        first = Client(rig).lease()
        rig.clock.advance(1)
        second = Client(rig).lease()
        rig.clock.advance(3.9)
        rig.leases.tick()
        self.assertEqual(first.given, [])
        rig.clock.advance(0.1)
        rig.leases.tick()
        self.assertEqual((first.given, second.given), ([None], []))
        rig.clock.advance(10)
        rig.leases.tick()
        self.assertEqual(second.given, [])
        self.assertEqual(rig.count(), 2)
        self.assertEqual(rig.totals.of(A).wait_time, 5.0)

    def test_reserve_disabled(self) -> None:
        """reserve_pool_size 0 or reserve_pool_timeout 0: the reserve is never used."""
        for settings_ in ({"reserve_pool_size": 0}, {"reserve_pool_timeout": 0}):
            rig = Rig(default_pool_size=1, reserve_pool_size=2, query_wait_timeout=0)
            rig.reload(**settings_)
            rig.open_for(Client(rig).lease())
            waiter = Client(rig).lease()
            rig.clock.advance(1000)
            rig.leases.tick()
            self.assertEqual(waiter.given, [])

    def test_server_idle_timeout_keeps_min_pool_size(self) -> None:
        """Idle servers past server_idle_timeout close, oldest first, never below
        min_pool_size (lent servers count toward it)."""
        rig = Rig(default_pool_size=4, min_pool_size=2, server_idle_timeout=10)
        lent = rig.open_for(Client(rig).lease())
        old, mid, new = (rig.open_for(Client(rig).lease()) for _ in range(3))
        rig.leases.release(old, True)
        rig.clock.advance(1)
        rig.leases.release(mid, True)
        rig.clock.advance(1)
        rig.leases.release(new, True)
        rig.clock.advance(8.5)
        rig.leases.tick()
        self.assertTrue(closed(old))
        self.assertEqual((mid.state, new.state), (b.IDLE, b.IDLE))
        rig.clock.advance(100)
        rig.leases.tick()
        self.assertTrue(closed(mid))
        self.assertEqual((new.state, lent.state), (b.IDLE, b.ATTACHED))
        self.assertEqual(rig.count(), 2)

    def test_server_idle_timeout_zero_keeps_idle_servers(self) -> None:
        """server_idle_timeout = 0 never closes an idle server."""
        rig = Rig(server_idle_timeout=0)
        server = rig.member()
        rig.clock.advance(1e6)
        rig.leases.tick()
        self.assertEqual(server.state, b.IDLE)

    def test_min_pool_size_top_up_through_the_opener(self) -> None:
        """A used key is topped up to min_pool_size (capped at default_pool_size) through the
        opener; places being opened count, so a second tick opens no more."""
        rig = Rig(default_pool_size=3, min_pool_size=5)
        rig.leases.tick()
        self.assertEqual(rig.opened_for, [])  # a key nobody used
        server = rig.member()
        rig.leases.tick()
        self.assertEqual(rig.opened_for, [A, A])
        rig.leases.tick()
        self.assertEqual(len(rig.opened_for), 2)
        self.assertEqual(rig.stats(), LeaseStats(0, 1, 2, 0, 0.0))
        opened = rig.new_server()
        rig.leases.opened(opened)
        rig.leases.release(opened, True)
        rig.leases.open_failed(A)
        self.assertEqual(rig.stats(), LeaseStats(0, 2, 0, 0, 0.0))
        rig.leases.tick()
        self.assertEqual(len(rig.opened_for), 3)
        self.assertEqual(server.state, b.IDLE)

    def test_idle_timeout_then_top_up_agree(self) -> None:
        """With min_pool_size the idle timeout never closes what the top-up would reopen."""
        rig = Rig(default_pool_size=4, min_pool_size=1, server_idle_timeout=1)
        server = rig.member()
        rig.clock.advance(5)
        rig.leases.tick()
        self.assertEqual((server.state, rig.opened_for), (b.IDLE, []))

    def test_empty_unused_keys_are_forgotten(self) -> None:
        """A key with no server, place or waiter leaves the stats at the next tick,
        unless min_pool_size keeps it."""
        rig = Rig()
        lose(rig.member())
        rig.leases.tick()
        self.assertEqual(rig.leases.stats(), {})
        kept = Rig(min_pool_size=1)
        lose(kept.member())
        kept.leases.opener = None
        kept.leases.tick()
        self.assertEqual(list(kept.leases.stats()), [A])

    def test_reload_raising_the_limit_serves_waiters_at_the_tick(self) -> None:
        """Waiters get places a reload made, at the next tick, in arrival order."""
        rig = Rig(default_pool_size=1)
        rig.open_for(Client(rig).lease())
        waiters = [Client(rig).lease() for _ in range(3)]
        rig.reload(default_pool_size=3)
        rig.leases.tick()
        self.assertEqual([w.given for w in waiters], [[None], [None], []])


class CallbackTests(SynchronousTestCase):
    def test_callbacks_see_whole_structures(self) -> None:
        """A got callback sees counts that already include what it was given."""
        rig = Rig(default_pool_size=1)
        server = rig.open_for(Client(rig).lease())
        seen: list[LeaseStats] = []
        rig.leases.lease(A, lambda s: seen.append(rig.stats()), lambda: None)
        rig.leases.release(server, True)
        self.assertEqual(seen, [LeaseStats(1, 0, 0, 0, 0.0)])

    def test_failing_opens_pass_places_down_a_long_queue_without_recursion(self) -> None:
        """Each waiter whose open fails at once hands its place to the next, for thousands
        of waiters, in arrival order, without a call stack as deep as the queue."""
        rig = Rig(default_pool_size=1)
        server = rig.open_for(Client(rig).lease())
        order: list[int] = []

        def failing(i: int) -> Any:
            def got(s: Optional[BackendProtocol]) -> None:
                order.append(i)
                rig.leases.open_failed(A)

            return got

        for i in range(5000):
            rig.leases.lease(A, failing(i), lambda: None)
        rig.leases.release(server, False)
        self.assertEqual(order, list(range(5000)))
        self.assertEqual(rig.leases.stats()[A], LeaseStats(0, 0, 0, 0, 0.0))

    def test_a_raising_callback_does_not_strand_the_others(self) -> None:
        """A callback that raises is logged; the callbacks queued after it still run."""
        rig = Rig(default_pool_size=1, query_wait_timeout=1)
        rig.open_for(Client(rig).lease())

        def broken() -> None:
            raise RuntimeError("boom")

        rig.leases.lease(A, lambda s: None, broken)
        other = Client(rig).lease()
        rig.clock.advance(1)
        rig.leases.tick()
        self.assertEqual(other.expired_count, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stats_longest_wait_per_key(self) -> None:
        """stats: per key lent, idle, opening, waiting and the longest wait."""
        rig = Rig(default_pool_size=2)
        rig.open_for(Client(rig).lease())
        Client(rig).lease()
        Client(rig).lease()
        rig.clock.advance(2)
        Client(rig).lease()
        rig.clock.advance(1.5)
        rig.member(B)
        self.assertEqual(
            rig.leases.stats(),
            {A: LeaseStats(1, 0, 1, 2, 3.5), B: LeaseStats(0, 1, 0, 0, 0.0)},
        )


# -- random sequences ------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "lease",
                "lease_unverified",
                "open",
                "open_password",
                "fail_open",
                "release",
                "release_unclean",
                "lose_lent",
                "lose_idle",
                "withdraw",
                "tick",
                "adopt",
                "retire",
            ]
        ),
        st.sampled_from([A, B]),
        st.integers(min_value=0, max_value=30),
    ),
    min_size=10,
    max_size=120,
)


class Model:
    """The truth the Leases must agree with: what each test client holds or owes."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.held: dict[PoolKey, list[BackendProtocol]] = {A: [], B: []}
        self.owed: dict[PoolKey, int] = {A: 0, B: 0}  # places given, server not opened yet
        self.tickets: dict[PoolKey, list[Client]] = {A: [], B: []}
        self.servers: list[BackendProtocol] = []

    def got_for(self, key: PoolKey) -> Any:
        def got(server: Optional[BackendProtocol]) -> None:
            if server is None:
                self.owed[key] += 1
            else:
                # READY (released to it) or IDLE (lent from idle, not attached yet).
                assert server.state in (b.READY, b.IDLE) and server.pool_key == key
                self.held[key].append(server)

        return got

    def opener(self, key: Key) -> None:
        assert isinstance(key, PoolKey)
        self.owed[key] += 1

    def idle(self, key: PoolKey) -> list[BackendProtocol]:
        return [
            s
            for s in self.servers
            if s.pool_key == key
            and s.state == b.IDLE
            and s.keeper is self.rig.leases
            and s not in self.held[key]
        ]

    def check(self, testcase: SynchronousTestCase) -> None:
        config = self.rig.config
        stats = self.rig.leases.stats()
        for key in (A, B):
            self.tickets[key] = [c for c in self.tickets[key] if c.ticket and c.ticket.waiting]
            got = stats.get(key, LeaseStats(0, 0, 0, 0, 0.0))
            idle = self.idle(key)
            want = (len(self.held[key]), len(idle), self.owed[key], len(self.tickets[key]))
            testcase.assertEqual(got[:4], want)
            count = got.active + got.idle + got.opening
            testcase.assertLessEqual(count, config.default_pool_size + config.reserve_pool_size)
            if got.waiting:
                # Nobody waits beside an idle server, nor while there is room.
                testcase.assertEqual(got.idle, 0)
                testcase.assertGreaterEqual(count, config.default_pool_size)
            for server in idle + self.held[key]:
                testcase.assertTrue(self.rig.leases.is_member(server))


def _of_key(key: Optional[PoolKey], server: BackendProtocol) -> bool:
    return server.pool_key == key


class RandomSequenceTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(OPS, st.integers(1, 3), st.integers(0, 2), st.integers(0, 2))
    def test_counts_never_leak(
        self, ops: list[tuple[str, PoolKey, int]], size: int, reserve: int, minimum: int
    ) -> None:
        """Random leases, opens, releases, losses, withdrawals and ticks keep every key's
        count equal to what clients hold + what sits idle + what is being opened, and
        never past default_pool_size + reserve_pool_size."""
        rig = Rig(
            default_pool_size=size,
            reserve_pool_size=reserve,
            reserve_pool_timeout=3,
            min_pool_size=minimum,
            query_wait_timeout=7,
            server_idle_timeout=5,
        )
        model = Model(rig)
        rig.leases.opener = model.opener
        leases = rig.leases
        for op, key, n in ops:
            held = model.held[key]
            if op in ("lease", "lease_unverified"):
                client = Client(rig, key, verified=op == "lease")
                client.got = model.got_for(key)  # type: ignore[method-assign]
                client.lease()
                if client.ticket is not None:
                    model.tickets[key].append(client)
            elif op in ("open", "open_password") and model.owed[key]:
                model.owed[key] -= 1
                server = rig.new_server(key, password=op == "open_password")
                model.servers.append(server)
                leases.opened(server)
                if n % 2:  # the opener's server: handed back at once
                    leases.release(server, True)
                else:
                    held.append(server)
            elif op == "fail_open" and model.owed[key]:
                model.owed[key] -= 1
                leases.open_failed(key)
            elif op in ("release", "release_unclean") and held:
                server = held.pop(n % len(held))
                leases.release(server, op == "release")
            elif op == "lose_lent" and held:
                server = held.pop(n % len(held))
                lose(server)  # nobody watches it here: the session would call forget
                leases.forget(server)
                if n % 2:
                    leases.release(server, True)  # a session that also releases it
            elif op == "lose_idle":
                idle = model.idle(key)
                if idle:
                    lose(idle[n % len(idle)])
            elif op == "withdraw" and model.tickets[key]:
                client = model.tickets[key].pop(n % len(model.tickets[key]))
                assert client.ticket is not None
                leases.withdraw(client.ticket)
            elif op == "tick":
                rig.clock.advance(n / 5)
                leases.tick()
            elif op == "adopt":
                server = rig.new_server(key, password=bool(n % 2))
                model.servers.append(server)
                leases.release(server, bool(n % 3))
            elif op == "retire":
                leases.retire(partial(_of_key, key if n % 2 == 0 else None))
            model.check(self)


class PinnedResetTests(SynchronousTestCase):
    """reset_and_release: a pinned client's server is reset before it serves others."""

    def setUp(self) -> None:
        self.rig = Rig(default_pool_size=1)
        self.client = Client(self.rig).lease()
        self.server = self.rig.open_for(self.client)
        self.waiter = Client(self.rig).lease()
        self.rig.leases.reset_and_release(self.server)

    def test_a_clean_reset_hands_the_server_on(self) -> None:
        sent = self.server.transport.value()  # type: ignore[attr-defined]
        self.assertIn(b"DISCARD ALL", sent)
        self.assertEqual(self.waiter.given, [], "not before the reset answered")
        self.server.dataReceived(m.message(b"C", b"DISCARD ALL\0") + m.ready_for_query(m.IDLE))
        self.assertEqual(self.waiter.given, [self.server])

    def test_a_failed_reset_closes_it_and_gives_its_place(self) -> None:
        self.server.dataReceived(m.error_response("XX000", "no") + m.ready_for_query(m.IDLE))
        self.assertEqual(self.waiter.given, [None])
        self.assertEqual(self.rig.stats().active, 0)

    def test_a_reset_that_never_answers_is_timed_out(self) -> None:
        self.rig.clock.advance(29)
        self.assertEqual(self.waiter.given, [])
        self.rig.clock.advance(2)
        self.assertEqual(self.waiter.given, [None])
        self.assertFalse(self.server.connected_ok)
