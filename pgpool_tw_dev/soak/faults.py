"""The soak's faults, the probe that times the return to clean service, and the seeded
schedule that runs them one after the other.

Each fault has a harm (done before its clock starts: the server killed, stopped or
frozen, the client killed, the flood's sockets open) and a repair that runs while the
probe, a ``psql -c 'select 1'`` through the pooler every 100 ms, tries until one
succeeds; the seconds from the harm to that success are the fault's time to clean
service.

Must never: signal a process it did not start: the server's postmaster is devdb's (by
the pid devdb read from its pidfile), a victim is our own Popen; talk to anything but
loopback.
"""

from __future__ import annotations

import dataclasses
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

from pgpool_tw_dev.devdb import TempPostgres
from pgpool_tw_dev.soak.ledger import Ledger
from pgpool_tw_dev.soak.stage import DATABASE, USER, SoakPooler

KINDS = (
    "kill9",
    "restart",
    "sigstop",
    "kill-client-tx",
    "kill-client-copy",
    "flood-silent",
    "flood-partial",
    "flood-nopassword",
)
DESCRIPTIONS = {
    "kill9": "kill -9 of the postmaster and every server process at once, restart 1 s later",
    "restart": "pg_ctl stop -m fast, then pg_ctl start (a fast restart)",
    "sigstop": "SIGSTOP of the postmaster for 2 to 6 s, then SIGCONT (its backends run on)",
    "kill-client-tx": "SIGKILL of a client process holding uncommitted INSERTs (idle in "
    "transaction, or in a running pg_sleep)",
    "kill-client-copy": "SIGKILL of a client process in the middle of COPY FROM STDIN",
    "flood-silent": "hundreds of connections that send nothing",
    "flood-partial": "hundreds of connections that send half a startup packet",
    "flood-nopassword": "hundreds of startup packets for a password user, never the password",
}
PROBE_EVERY = 0.1
PROBE_TIMEOUT = 10.0  # one psql's whole try (PGCONNECT_TIMEOUT is 3 s)
VICTIM_ROWS = 50
_PROTOCOL_3 = 196608


@dataclasses.dataclass
class FaultRecord:
    """One fault: ``at`` is seconds since the soak's start, when the harm was done."""

    number: int
    kind: str
    at: float
    detail: str = ""
    #: From the harm to the end of the repair (the server back, the flood closed).
    lasted: float = 0.0
    #: From the harm to the first probe that succeeded (None: none did in time).
    clean_after: Optional[float] = None
    probe_failures: int = 0


# -- the probe ------------------------------------------------------------------------------


def probe_until_clean(
    pooler: SoakPooler, since: float, limit: float
) -> tuple[Optional[float], int]:
    """``psql -c 'select 1'`` every PROBE_EVERY until one succeeds: (seconds from ``since``
    to its end, failed tries), or (None, tries) after ``limit`` seconds."""
    failures = 0
    argv = pooler.psql_argv("select 1")
    env = pooler.client_env("soak_probe")
    while time.monotonic() - since < limit:
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                timeout=PROBE_TIMEOUT,  # run() kills its own child on the timeout
            )
            if proc.returncode == 0 and proc.stdout.strip() == "1":
                return time.monotonic() - since, failures
        except subprocess.TimeoutExpired:
            pass
        failures += 1
        time.sleep(PROBE_EVERY)
    return None, failures


def wait_reaped(pid: int, timeout: float = 30.0) -> None:
    """Until ``pid`` (a killed postmaster, no child of ours) is reaped by whoever adopted
    it: PostgreSQL refuses to start while the pid in its socket lock file exists, and a
    zombie does (in containers whose init reaps lazily, for about 2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)  # signal 0: no signal is sent, only the pid looked up
        except ProcessLookupError:
            return
        except PermissionError:
            pass  # exists, owned by the server user
        time.sleep(0.05)


# -- floods ---------------------------------------------------------------------------------


def startup_packet(**params: str) -> bytes:
    body = struct.pack("!i", _PROTOCOL_3)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


class Flood:
    """``size`` connections to the pooler that never finish logging in, held until the
    pooler closes them or ``hold`` seconds pass."""

    def __init__(self, kind: str, port: int, size: int, hold: float) -> None:
        self.kind = kind
        self.port = port
        self.size = size
        self.hold = hold
        self.socks: list[socket.socket] = []
        self.refused = 0
        self.closed_after: list[float] = []
        self.opened_at = 0.0

    def open(self) -> float:
        if self.kind == "flood-partial":
            first = struct.pack("!i", 80) + struct.pack("!i", _PROTOCOL_3)[:2]
        elif self.kind == "flood-nopassword":
            first = startup_packet(user=USER, database=DATABASE, application_name="soak_flood")
        else:
            first = b""
        for _ in range(self.size):
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=2.0)
                if first:
                    sock.sendall(first)
                sock.setblocking(False)
            except OSError:
                self.refused += 1
                continue
            self.socks.append(sock)
        self.opened_at = time.monotonic()
        return self.opened_at

    def hold_until_closed(self) -> None:
        """Read (and drop) what the pooler sends until it closes each socket; close ours
        at ``hold``."""
        selector = selectors.DefaultSelector()
        for sock in self.socks:
            selector.register(sock, selectors.EVENT_READ)
        open_count = len(self.socks)
        deadline = self.opened_at + self.hold
        while open_count and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                peer = key.fileobj
                if not isinstance(peer, socket.socket):
                    continue
                try:
                    data = peer.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.closed_after.append(time.monotonic() - self.opened_at)
                    selector.unregister(peer)
                    open_count -= 1
        selector.close()
        for sock in self.socks:
            sock.close()

    def detail(self) -> str:
        text = f"{len(self.socks)} sockets"
        if self.refused:
            text += f" ({self.refused} refused)"
        closed = sorted(self.closed_after)
        if closed:
            text += f"; pooler closed {len(closed)} at {closed[0]:.1f}-{closed[-1]:.1f} s"
        left = len(self.socks) - len(closed)
        if left:
            text += f"; {left} still open at {self.hold:g} s"
        return text


# -- the schedule ---------------------------------------------------------------------------


class Scheduler:
    """Faults on a seeded schedule: every kind once in a shuffled round, then again; a
    random gap between two.  The seed fixes the schedule (order, gaps, pause lengths,
    victim modes), not the timing of the clients around it."""

    def __init__(
        self,
        pg: TempPostgres,
        pooler: SoakPooler,
        ledger: Ledger,
        seed: int,
        kinds: tuple[str, ...],
        gap: tuple[float, float],
        flood_size: int,
        recover_limit: float,
        started: float,
        say: Callable[[str], None],
    ) -> None:
        self.pg = pg
        self.pooler = pooler
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.kinds = kinds
        self.gap = gap
        self.flood_size = flood_size
        self.recover_limit = recover_limit
        self.started = started
        self.say = say
        self.records: list[FaultRecord] = []
        self.stop = threading.Event()
        self._bag: list[str] = []

    def next_kind(self) -> str:
        if not self._bag:
            self._bag = list(self.kinds)
            self.rng.shuffle(self._bag)
        return self._bag.pop()

    def run(self, until: float) -> None:
        """Faults until ``until``, and on until every kind has run once."""
        seen: set[str] = set()
        while not self.stop.is_set():
            gap = self.rng.uniform(*self.gap)
            kind = self.next_kind()
            if time.monotonic() + gap >= until and seen >= set(self.kinds):
                return
            if self.stop.wait(gap):
                return
            if not self.pooler.alive():
                self.say("the pooler exited: no more faults")
                return
            record = self.one(kind)
            seen.add(kind)
            self.records.append(record)
            clean = "never" if record.clean_after is None else f"{record.clean_after:.2f}s"
            self.say(
                f"fault {record.number} {kind} at {record.at:.0f}s: clean after {clean}; "
                f"{record.detail}"
            )

    def one(self, kind: str) -> FaultRecord:
        record = FaultRecord(len(self.records) + 1, kind, 0.0)
        flood: Optional[Flood] = None
        if kind.startswith("flood-"):
            hold = self.pooler.auth_timeout * 2 + 3.0
            flood = Flood(kind, self.pooler.port, self.flood_size, hold)
        repair = self.harm(kind, record, flood)
        harmed = time.monotonic()
        record.at = harmed - self.started
        errors: list[str] = []

        def repair_safely() -> None:
            try:
                repair()
            except Exception as e:
                errors.append(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))

        repairing = threading.Thread(target=repair_safely, name="soak-repair", daemon=True)
        repairing.start()
        record.clean_after, record.probe_failures = probe_until_clean(
            self.pooler, harmed, self.recover_limit
        )
        repairing.join()
        record.lasted = time.monotonic() - harmed
        if flood is not None:
            record.detail = flood.detail()
        if errors:
            record.detail += f"; repair failed: {errors[0][:100]}"
            record.clean_after = None
            self.say(f"fault {record.number} {kind}: repair failed: {errors[0]}")
            self.restore()
        return record

    def restore(self) -> None:
        """After a repair that failed: the server running again, so the next faults and
        the count of rows are still meaningful."""
        pg = self.pg
        for _ in range(3):
            if pg.pid is not None:
                pg.freeze(False)
                return
            try:
                pg.restart()
            except RuntimeError as e:
                self.say(f"restart after a failed repair failed: {e}")
                time.sleep(2.0)

    def harm(self, kind: str, record: FaultRecord, flood: Optional[Flood]) -> Callable[[], None]:
        """Do the fault's harm; return its repair."""
        pg = self.pg
        if kind == "kill9":
            pid = pg.pid
            pg.crash()

            def restart_later() -> None:
                time.sleep(1.0)
                if pid is not None:
                    wait_reaped(pid)
                pg.restart()

            return restart_later
        if kind == "restart":
            pg.halt("fast")
            return pg.restart
        if kind == "sigstop":
            pause = self.rng.uniform(2.0, 6.0)
            pid = pg.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            record.detail = f"stopped {pause:.1f} s"

            def wake_later() -> None:
                time.sleep(pause)
                os.kill(pid, signal.SIGCONT)

            return wake_later
        if kind in ("kill-client-tx", "kill-client-copy"):
            record.detail = self.kill_victim(kind)
            return lambda: None
        if flood is not None:
            flood.open()
            return flood.hold_until_closed
        raise ValueError(f"unknown fault {kind!r}")

    def kill_victim(self, kind: str) -> str:
        """A client process, killed with SIGKILL once it is mid-transaction or mid-COPY;
        its rows must never be found."""
        mode = "copy" if kind == "kill-client-copy" else self.rng.choice(("tx-idle", "tx-busy"))
        delay = self.rng.uniform(0.0, 0.3)
        ids = self.ledger.new_ids(VICTIM_ROWS)
        argv = [sys.executable, "-m", "pgpool_tw_dev.soak.victim", mode]
        argv += [self.pooler.dsn("soak_victim"), str(ids[0]), str(len(ids))]
        # new_ids hands out consecutive ids; the victim writes ids[0] .. ids[0] + count - 1
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()))  # type: ignore[union-attr]
        reader.daemon = True
        reader.start()
        reader.join(15.0)
        got_ready = bool(ready) and ready[0].strip() == "ready"
        if got_ready:
            time.sleep(delay)
        proc.kill()  # our own child, by its Popen
        _, err = proc.communicate()
        self.ledger.abort(ids)
        if not got_ready:
            lines = [line for line in (err or "").splitlines() if line.strip()]
            return f"{mode}: never ready ({lines[-1][:100] if lines else 'no output'})"
        return f"{mode}, killed {delay:.2f} s after ready"
