"""systemd's notify protocol: what ``pgpool_tw.systemd`` sends, where, and that it never raises."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw import systemd


class NotifyTests(SynchronousTestCase):
    def bound(self, address: str) -> socket.socket:
        """A datagram socket bound at ``address``, closed after the test."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(address)
        sock.settimeout(5)
        return sock

    def socket_path(self) -> str:
        directory = tempfile.mkdtemp(prefix="pgtw-sd-", dir="/tmp")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "notify")

    def test_no_notify_socket(self) -> None:
        """Without NOTIFY_SOCKET (or with it empty) notify sends nothing and returns False."""
        self.assertFalse(systemd.notify("READY=1", environ={}))
        self.assertFalse(systemd.notify("READY=1", environ={"NOTIFY_SOCKET": ""}))
        self.assertFalse(systemd.reloading(environ={}))

    def test_sends_joined_states(self) -> None:
        """With a bound socket path notify returns True and sends the states joined by newlines."""
        path = self.socket_path()
        sock = self.bound(path)
        sent = systemd.notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": path})
        self.assertTrue(sent)
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=serving")

    def test_reads_os_environ_by_default(self) -> None:
        """Without an ``environ`` argument notify reads NOTIFY_SOCKET from os.environ."""
        path = self.socket_path()
        sock = self.bound(path)
        self.patch(os, "environ", {**os.environ, "NOTIFY_SOCKET": path})
        self.assertTrue(systemd.notify("STOPPING=1"))
        self.assertEqual(sock.recv(4096), b"STOPPING=1")

    def test_abstract_socket(self) -> None:
        """A NOTIFY_SOCKET starting with '@' names an abstract socket."""
        name = f"pgpool-tw-test-{uuid.uuid4().hex}"
        sock = self.bound("\0" + name)
        self.assertTrue(systemd.notify("READY=1", environ={"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(sock.recv(4096), b"READY=1")

    def test_reloading_sends_monotonic_usec(self) -> None:
        """reloading() sends RELOADING=1 and MONOTONIC_USEC, the CLOCK_MONOTONIC time in µs."""
        path = self.socket_path()
        sock = self.bound(path)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.assertTrue(systemd.reloading(environ={"NOTIFY_SOCKET": path}))
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = sock.recv(4096).decode().split("\n")
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(lines[0], "RELOADING=1")
        name, _, value = lines[1].partition("=")
        self.assertEqual(name, "MONOTONIC_USEC")
        self.assertTrue(value.isdigit(), value)
        self.assertTrue(before <= int(value) <= after, (before, value, after))

    def test_nobody_listening(self) -> None:
        """A socket nobody listens on gives False, never an exception."""
        missing = self.socket_path()  # its directory exists, the socket does not
        stale = self.socket_path()
        self.bound(stale).close()  # the file stays, nobody reads it
        abstract = "@pgpool-tw-test-" + uuid.uuid4().hex
        too_long = "/tmp/" + "x" * 200
        for address in (missing, stale, abstract, too_long, "/nonexistent/dir/notify"):
            self.assertFalse(systemd.notify("READY=1", environ={"NOTIFY_SOCKET": address}), address)
        self.assertFalse(systemd.reloading(environ={"NOTIFY_SOCKET": missing}))
