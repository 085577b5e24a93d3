"""Running one of the user's shell commands (failover_command, failback_command,
follow_primary_command) the way pgpool-II's ``system()`` does, without blocking the reactor.

Owns: starting ``/bin/sh -c`` with the pooler's environment and no input, logging what
the command prints line by line as it comes, its end, and the optional time limit that
kills the command's whole process group.  The command line arrives complete (escapes
already expanded and quoted by ``config/escapes.py``).  Must never raise into the reactor
and never wait on the command synchronously: every outcome is the Deferred's int.

The shell runs in a session of its own so that a time limit kills what it started too,
not only the shell.  Twisted's spawnProcess has no setsid for pipes (only with a PTY,
which would merge stdout and stderr), and a ``setsid`` program is not everywhere, so a
few lines of Python (this interpreter, isolated mode) call ``os.setsid()`` and exec the
shell in the same process: the pid Twisted reaps is the shell's and its process group's.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import sys
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["KILL_AFTER", "LINE_LIMIT", "LINGER", "SHELL", "run_command"]

log = Logger()

SHELL = "/bin/sh"
#: Seconds between SIGTERM and SIGKILL once a command's time is up.
KILL_AFTER = 5.0
#: Seconds a result waits, once the shell has exited, for its output pipes to close: a
#: background child holding them must not hold the result (system() does not wait for it).
LINGER = 1.0
#: Characters logged as one line at most, so a command printing without newlines cannot
#: grow memory; the rest follows as further lines.
LINE_LIMIT = 16384
#: The status a shell gives a command it cannot find, and timeout(1) a command it killed.
NOT_FOUND = 127
TIMED_OUT = 124

# Python ignores SIGPIPE and SIGXFSZ at startup and exec keeps ignored signals: the shell
# gets them back as defaults, as system() gives them.
_START = """\
import os, signal, sys
os.setsid()
for name in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
try:
    os.execv(sys.argv[1], ["sh", "-c", sys.argv[2]])
except OSError as error:
    sys.stderr.write("cannot run %s: %s\\n" % (sys.argv[1], error.strerror))
    sys.stderr.flush()
    os._exit(127)
"""


def _status(reason: Failure) -> tuple[int, Optional[int]]:
    """(exit status as a shell reports it, signal or None) from Twisted's end reason."""
    value = reason.value
    number = getattr(value, "signal", None)
    if number is not None:
        return 128 + number, number
    code = getattr(value, "exitCode", None)
    return (code if code is not None else 0), None


class _Run(ProcessProtocol):
    """One command's life: its output as log lines, its end, its time limit."""

    def __init__(self, reactor: Any, what: str, timeout: Optional[float], kill_after: float):
        self.done: Deferred[int] = Deferred()
        self.pid: Optional[int] = None
        self._reactor = reactor
        self._what = what
        self._timeout = timeout
        self._kill_after = kill_after
        self._decoders = {
            fd: codecs.getincrementaldecoder("utf-8")(errors="replace") for fd in (1, 2)
        }
        self._partial = {1: "", 2: ""}
        self._exit: Optional[tuple[int, Optional[int]]] = None
        self._timed_out = False
        self._ended = False
        self._finished = False
        self._timer: Any = None
        self._kill_timer: Any = None
        self._linger: Any = None

    def start(self) -> None:
        if self._timeout is not None and not self._finished:
            self._timer = self._reactor.callLater(self._timeout, self._expire)

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None  # Twisted connects before calling this
        self.pid = transport.pid  # kept: Twisted forgets it once the shell is reaped
        transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        decoder = self._decoders.get(fd)
        if decoder is not None:
            self._lines(fd, decoder.decode(data))

    def childConnectionLost(self, fd: int) -> None:
        decoder = self._decoders.pop(fd, None)
        if decoder is None:
            return
        self._lines(fd, decoder.decode(b"", True))
        rest = self._partial.pop(fd, "")
        if rest:
            self._line(fd, rest)

    def _lines(self, fd: int, text: str) -> None:
        if not text:
            return
        lines = (self._partial[fd] + text).split("\n")
        rest = lines.pop()
        for line in lines:
            self._line(fd, line)
        while len(rest) > LINE_LIMIT:
            self._line(fd, rest[:LINE_LIMIT])
            rest = rest[LINE_LIMIT:]
        self._partial[fd] = rest

    def _line(self, fd: int, line: str) -> None:
        if line.endswith("\r"):
            line = line[:-1]
        emit = log.warn if fd == 2 else log.info
        for at in range(0, max(len(line), 1), LINE_LIMIT):
            emit("{what}: {line}", what=self._what, line=line[at : at + LINE_LIMIT])

    def processExited(self, reason: Failure) -> None:
        self._exit = _status(reason)
        if not self._finished and self._linger is None:
            self._linger = self._reactor.callLater(LINGER, self._finish)

    def processEnded(self, reason: Failure) -> None:
        self._ended = True
        if self._exit is None:
            self._exit = _status(reason)
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self._finish()

    def _expire(self) -> None:
        self._timer = None
        if self._finished:
            return
        if self._exit is not None:  # the shell ended in time; only its pipes linger
            self._finish()
            return
        self._timed_out = True
        log.warn(
            "{what} timed out after {seconds} s", what=self._what, seconds=f"{self._timeout:g}"
        )
        self._kill(signal.SIGTERM)
        self._kill_timer = self._reactor.callLater(self._kill_after, self._kill, signal.SIGKILL)

    def _kill(self, number: int) -> None:
        """Signal the command's process group; before the wrapper's setsid there is no
        group yet and the wrapper alone is signalled."""
        if self._ended or self.pid is None:
            return
        try:
            os.killpg(self.pid, number)
            return
        except ProcessLookupError:
            pass
        except OSError as error:
            log.warn("{what}: cannot signal it: {error}", what=self._what, error=error.strerror)
            return
        if self._exit is None and self.transport is not None:
            with contextlib.suppress(ProcessExitedAlready, OSError):
                self.transport.signalProcess(number)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        for timer in (self._timer, self._linger):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._linger = None
        code, number = self._exit if self._exit is not None else (NOT_FOUND, None)
        if self._timed_out:
            code = TIMED_OUT
        elif number is not None:
            log.warn("{what} was killed by signal {signal}", what=self._what, signal=number)
        elif code == 0:
            log.info("{what} exited with status {status}", what=self._what, status=code)
        else:
            log.warn("{what} exited with status {status}", what=self._what, status=code)
        self.done.callback(code)


def run_command(
    reactor: Any,
    command: str,
    what: str,
    timeout: Optional[float] = None,
    *,
    shell: str = SHELL,
    kill_after: float = KILL_AFTER,
) -> Deferred[int]:
    """Run ``command`` with ``sh -c``; fires with its exit status (128 + N for signal N,
    124 when ``timeout`` seconds passed and its process group was killed, 127 when it
    could not start).  ``timeout`` None waits for ever, as pgpool-II does."""
    run = _Run(reactor, what, timeout, kill_after)
    args = [sys.executable, "-I", "-c", _START, shell, command]
    try:
        if not sys.executable:
            raise OSError("no Python interpreter path (sys.executable) to start it with")
        reactor.spawnProcess(
            run,
            sys.executable,
            args,
            env=dict(os.environ),
            usePTY=False,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
    except Exception as error:
        log.warn("{what} could not start: {error}", what=what, error=error)
        return succeed(NOT_FOUND)
    run.start()
    return run.done
