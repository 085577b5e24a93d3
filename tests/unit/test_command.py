"""pgpool_tw.checks.command: real shells under the real reactor; their output as log
lines, their status as the result, a time limit that kills the whole process group."""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from pgpool_tw.checks.command import LINE_LIMIT, run_command

NAMESPACE = "pgpool_tw.checks.command"


def _state(pid: int) -> Optional[tuple[str, int]]:
    """(state letter, process group) of a live or zombie process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _running_in_group(group: int) -> list[int]:
    """Processes of that group that are not zombies, once a SIGKILL sent to the group has
    had its effect (a killed process takes a moment to stop running; up to 5 s here)."""
    deadline = time.monotonic() + 5
    while True:
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                state = _state(int(name))
                if state is not None and state[1] == group and state[0] != "Z":
                    found.append(int(name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


class RunCommandTests(TestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.waiting: list[tuple[str, defer.Deferred[None]]] = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") != NAMESPACE:
            return
        self.events.append(event)
        text = formatEvent(event)
        for wanted, waiter in list(self.waiting):
            if text == wanted:
                self.waiting.remove((wanted, waiter))
                waiter.callback(None)

    def lines(self, what: str) -> list[tuple[str, str]]:
        """(level, text) of the lines logged for ``what``, in order."""
        return [
            (event["log_level"].name, formatEvent(event))
            for event in self.events
            if event.get("what") == what
        ]

    def logged(self, text: str) -> defer.Deferred[None]:
        waiter: defer.Deferred[None] = defer.Deferred()
        self.waiting.append((text, waiter))
        return waiter

    @defer.inlineCallbacks
    def test_output_lines_and_status(self) -> Any:
        """stdout lines at info, stderr at warn, a last line without newline, then the
        exit status at info for 0."""
        status = yield run_command(
            reactor, "echo one; echo two >&2; echo 'a {b} c'; printf tail", "cmd1"
        )
        self.assertEqual(status, 0)
        lines = self.lines("cmd1")
        self.assertEqual(lines[-1], ("info", "cmd1 exited with status 0"))
        self.assertEqual(
            sorted(lines[:-1]),
            sorted(
                [
                    ("info", "cmd1: one"),
                    ("warn", "cmd1: two"),
                    ("info", "cmd1: a {b} c"),
                    ("info", "cmd1: tail"),
                ]
            ),
        )
        stdout = [text for level, text in lines if level == "info"]
        self.assertEqual(stdout[:3], ["cmd1: one", "cmd1: a {b} c", "cmd1: tail"])

    @defer.inlineCallbacks
    def test_exit_status(self) -> Any:
        """A non-zero status is the result and one warn line."""
        status = yield run_command(reactor, "exit 3", "cmd2")
        self.assertEqual(status, 3)
        self.assertEqual(self.lines("cmd2"), [("warn", "cmd2 exited with status 3")])

    @defer.inlineCallbacks
    def test_killed_by_signal(self) -> Any:
        """A shell killed by signal N gives 128 + N, as a shell reports it."""
        status = yield run_command(reactor, "kill -TERM $$", "cmd3")
        self.assertEqual(status, 128 + 15)
        self.assertEqual(self.lines("cmd3"), [("warn", "cmd3 was killed by signal 15")])

    @defer.inlineCallbacks
    def test_missing_program(self) -> Any:
        """A program that does not exist: sh's 127 and its complaint at warn."""
        status = yield run_command(reactor, "/nonexistent/program-x", "cmd4")
        self.assertEqual(status, 127)
        lines = self.lines("cmd4")
        self.assertEqual(lines[-1], ("warn", "cmd4 exited with status 127"))
        self.assertTrue(any("program-x" in text for level, text in lines[:-1] if level == "warn"))

    @defer.inlineCallbacks
    def test_missing_shell(self) -> Any:
        """No shell to run it with: 127 and a line naming the shell."""
        status = yield run_command(reactor, "true", "cmd5", shell="/nonexistent/sh")
        self.assertEqual(status, 127)
        self.assertTrue(any("/nonexistent/sh" in text for _, text in self.lines("cmd5")))

    @defer.inlineCallbacks
    def test_timeout_kills_the_group(self) -> Any:
        """Past its time the command's process group is killed: 124, one warn line, and
        neither the shell nor the child it started is left running."""
        status = yield run_command(reactor, "echo $$; sleep 60 & echo $!; wait", "cmd6", 0.5)
        self.assertEqual(status, 124)
        lines = self.lines("cmd6")
        self.assertEqual(lines[-1], ("warn", "cmd6 timed out after 0.5 s"))
        shell, child = (int(text.split(": ")[1]) for _, text in lines[:2])
        self.assertEqual(_running_in_group(shell), [])
        for pid in (shell, child):
            state = _state(pid)
            self.assertTrue(state is None or state[0] == "Z", (pid, state))

    @defer.inlineCallbacks
    def test_timeout_then_sigkill(self) -> Any:
        """A command that ignores SIGTERM gets SIGKILL after kill_after seconds."""
        status = yield run_command(
            reactor, "trap '' TERM; echo $$; sleep 60", "cmd7", 0.2, kill_after=0.2
        )
        self.assertEqual(status, 124)
        shell = int(self.lines("cmd7")[0][1].split(": ")[1])
        self.assertEqual(_running_in_group(shell), [])

    @defer.inlineCallbacks
    def test_own_session(self) -> Any:
        """The shell leads a session of its own (so its group can be killed alone)."""
        status = yield run_command(reactor, "echo $$; cut -d' ' -f6 /proc/$$/stat", "cmd8")
        self.assertEqual(status, 0)
        pid, session = (int(text.split(": ")[1]) for _, text in self.lines("cmd8")[:2])
        self.assertEqual(pid, session)
        self.assertNotEqual(session, os.getsid(0))

    @defer.inlineCallbacks
    def test_stdin_closed_and_environment(self) -> Any:
        """The command reads end of file at once and sees the pooler's environment."""
        os.environ["PGPOOL_TW_TEST_COMMAND"] = "x y$z"
        self.addCleanup(os.environ.pop, "PGPOOL_TW_TEST_COMMAND")
        status = yield run_command(
            reactor, 'cat; printf "%s\\n" "$PGPOOL_TW_TEST_COMMAND"', "cmd9", 30
        )
        self.assertEqual(status, 0)
        self.assertIn(("info", "cmd9: x y$z"), self.lines("cmd9"))

    @defer.inlineCallbacks
    def test_binary_and_long_lines(self) -> Any:
        """Bytes that are not UTF-8 become U+FFFD; a long line is logged in bounded pieces
        that together are the line."""
        status = yield run_command(
            reactor, "printf '\\377\\376ok\\n'; head -c 40000 /dev/zero | tr '\\0' x; echo", "cmd10"
        )
        self.assertEqual(status, 0)
        texts = [text[len("cmd10: ") :] for _, text in self.lines("cmd10")[:-1]]
        self.assertEqual(texts[0], "\ufffd\ufffdok")
        self.assertEqual("".join(texts[1:]), "x" * 40000)
        self.assertTrue(all(len(text) <= LINE_LIMIT for text in texts))

    @defer.inlineCallbacks
    def test_background_child_does_not_hold_the_result(self) -> Any:
        """Once the shell exits, a child left in the background (holding the output pipe)
        does not delay the result; its later output is still logged."""
        late = self.logged("cmd11: late")
        order: list[str] = []
        result = run_command(reactor, "(sleep 2; printf late) 2>/dev/null & echo early", "cmd11")
        result.addCallback(lambda status: order.append(f"status {status}"))
        late.addCallback(lambda _: order.append("late"))
        yield result
        yield late
        self.assertEqual(order, ["status 0", "late"])
