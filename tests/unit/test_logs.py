"""The log room and what sessions log, without a server: the escape of client text, JSON
lines, twistd's observer, the log settings, the statement framer, the disconnection line."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import Application
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.settings import Config, ConfigError, parse_config
from pgpool_tw.logs.escape import printable
from pgpool_tw.logs.jsonlog import json_line, json_observer, twistd_observer
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.session.logs import (
    StatementFrames,
    Statements,
    log_disconnection,
    statement_of,
    statements_for,
)
from pgpool_tw.stats.counters import Counters


def _parse(name: str, text: str) -> bytes:
    return m.message(b"P", m.cstring(name) + m.cstring(text) + b"\0\0")


class EscapeTests(SynchronousTestCase):
    def test_plain_text_is_returned_as_is(self) -> None:
        """Printable text (non-ASCII included) comes back unchanged, the same object."""
        text = "select 'ünïcode', 1 -- ok"
        self.assertIs(printable(text), text)

    def test_control_characters_are_escaped(self) -> None:
        """Newline, CR, tab, ESC, DEL, NEL and the Unicode line separators are escapes."""
        self.assertEqual(
            printable("a\nb\rc\td\x1be\x7ff\x85g\u2028h\u2029"),
            "a\\nb\\rc\\td\\x1be\\x7ff\\x85g\\u2028h\\u2029",
        )

    @given(st.text())
    def test_never_a_line_break(self, text: str) -> None:
        """Whatever the client sends, the escaped text is one line for any line splitter."""
        self.assertEqual(len(("x" + printable(text)).splitlines()), 1)


def _event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "log_format": "client={client} said {what}",
        "log_level": LogLevel.warn,
        "log_namespace": "pgpool_tw.session.machine",
        "log_time": 86400.25,
    }
    event.update(fields)
    return event


class JsonLineTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """Time (UTC, ms), level, namespace, message, process id and the event's plain
        fields; objects and Twisted's own keys are left out."""
        line = json_line(
            _event(client="1.2.3.4:5", what="hi", pid=7, node=0, ok=True, obj=object()), 42
        )
        self.assertEqual(
            json.loads(line),
            {
                "timestamp": "1970-01-02T00:00:00.250+00:00",
                "level": "warn",
                "namespace": "pgpool_tw.session.machine",
                "message": "client=1.2.3.4:5 said hi",
                "process_id": 42,
                "client": "1.2.3.4:5",
                "what": "hi",
                "pid": 7,
                "node": 0,
                "ok": True,
            },
        )

    def test_one_line_whatever_the_text(self) -> None:
        """A newline in a field or the message stays inside the JSON string."""
        line = json_line(_event(client="x", what="two\nlines\u2028"))
        self.assertNotIn("\n", line)
        self.assertEqual(json.loads(line)["what"], "two\nlines\u2028")

    def test_a_field_named_like_the_lines_own_is_left_out(self) -> None:
        """An event's 'message' or 'level' field never overwrites the line's own."""
        record = json.loads(json_line(_event(client="x", what="y", message="fake", level=1)))
        self.assertEqual((record["message"], record["level"]), ("client=x said y", "warn"))

    def test_failure_has_its_traceback(self) -> None:
        """log.failure's events carry the traceback."""
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(json_line(_event(client="x", what="y", log_failure=failure)))
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_observer_writes_one_line_per_event(self) -> None:
        """json_observer: every event of a Logger is one JSON line in the file."""
        out = io.StringIO()
        log = Logger(namespace="here", observer=json_observer(out))
        log.info("a {x}", x=1)
        log.error("b\nc")
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([r["message"] for r in records], ["a 1", "b\nc"])
        self.assertEqual([r["level"] for r in records], ["info", "error"])
        self.assertEqual(records[0]["x"], 1)


class TwistdObserverTests(SynchronousTestCase):
    def test_where_twistd_would_write(self) -> None:
        """-n without --logfile and --logfile=- write to stdout; a path to that file;
        --syslog and a daemon on stdout are left to twistd."""
        self.assertIsNone(twistd_observer({"syslog": True, "nodaemon": True}))
        self.assertIsNone(twistd_observer({"logfile": "-", "nodaemon": False}))
        self.assertIsNotNone(twistd_observer({"logfile": "-", "nodaemon": True}))
        self.assertIsNotNone(twistd_observer({"logfile": None, "nodaemon": True}))
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "pgpool.log")
        observer = twistd_observer({"logfile": path, "nodaemon": False})
        assert observer is not None
        observer(_event(client="c", what="w"))
        with open(path, encoding="utf-8") as handle:
            self.assertEqual(json.loads(handle.read())["message"], "client=c said w")

    def test_the_application_gets_the_observer(self) -> None:
        """_TwistdService sets its observer as the application's ILogObserver, which
        twistd logs to when no --logger is given."""
        from pgpool_tw.tap import _TwistdService

        service = _TwistdService(Config(), handle_signals=False)
        observer = json_observer(io.StringIO())
        service.log_observer = observer
        application = Application("pgpool")
        service.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """pgpool-II's defaults: text to stderr, nothing extra logged."""
        config = parse_config("")
        self.assertEqual(config.log_destination, "stderr")
        self.assertFalse(config.log_disconnections or config.log_statement)

    def test_values(self) -> None:
        """jsonlog and stderr are read; the booleans too."""
        config = parse_config(
            "log_destination = 'jsonlog'\nlog_disconnections = on\nlog_statement = on\n"
        )
        self.assertEqual(config.log_destination, "jsonlog")
        self.assertTrue(config.log_disconnections and config.log_statement)
        self.assertEqual(parse_config("log_destination = 'STDERR'").log_destination, "stderr")

    def test_syslog_is_one_warning(self) -> None:
        """syslog is not supported: one warning naming file, line and setting."""
        config = parse_config("port = 1\nlog_destination = 'stderr,syslog'\n", "p.conf")
        self.assertEqual(config.log_destination, "stderr")
        self.assertEqual(
            config.warnings,
            (
                "p.conf:2: log_destination: syslog is not supported by pgpool-tw; logging "
                "to stderr (twistd --syslog sends the log to syslog)",
            ),
        )

    def test_bad_values_refused(self) -> None:
        """An unknown destination, or two streams at once, is one line of error."""
        with self.assertRaises(ConfigError) as bad:
            parse_config("log_destination = 'csvlog'\n", "p.conf")
        self.assertIn("p.conf:1: log_destination: invalid value 'csvlog'", str(bad.exception))
        with self.assertRaises(ConfigError) as both:
            parse_config("log_destination = 'stderr,jsonlog'\n", "p.conf")
        self.assertIn("choose one of stderr or jsonlog", str(both.exception))


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[tuple[int, int], ...]]] = []

    def __call__(self, text: str, targets: Any) -> None:
        self.seen.append((text, tuple(targets)))


STREAM = (
    m.query("select 1")
    + _parse("", "select $1")
    + m.message(b"B", b"\0\0\0\0\0\0\0")
    + m.message(b"d", b"x" * 300)
    + _parse("s1", "insert into t values ($1)")
    + m.message(b"S", b"")
    + m.query("select 'a\nb'")
)
EXPECTED = [
    ("select 1", ((0, 99),)),
    ("select $1", ((0, 99),)),
    ("insert into t values ($1)", ((0, 99),)),
    ("select 'a\nb'", ((0, 99),)),
]


class StatementFramesTests(SynchronousTestCase):
    def feed(self, chunks: list[bytes]) -> list[tuple[str, tuple[tuple[int, int], ...]]]:
        recorder = Recorder()
        frames = StatementFrames(recorder, 0, 99)  # type: ignore[arg-type]
        for chunk in chunks:
            frames.feed(chunk)
        return recorder.seen

    def test_whole(self) -> None:
        """Query and Parse texts, in order, with the one server; other messages skipped."""
        self.assertEqual(self.feed([STREAM]), EXPECTED)

    def test_one_byte_at_a_time(self) -> None:
        """The same statements when every byte is its own chunk."""
        self.assertEqual(self.feed([STREAM[i : i + 1] for i in range(len(STREAM))]), EXPECTED)

    @given(st.lists(st.integers(0, len(STREAM)), max_size=8))
    def test_any_cut(self, cuts: list[int]) -> None:
        """The same statements wherever the chunks are cut."""
        points = [0, *sorted(cuts), len(STREAM)]
        self.assertEqual(self.feed([STREAM[a:b] for a, b in zip(points, points[1:])]), EXPECTED)

    def test_trailing_partial_message_waits(self) -> None:
        """A message cut at the end is logged only once whole."""
        half = m.query("select 2")
        self.assertEqual(self.feed([STREAM + half[:7]]), EXPECTED)
        self.assertEqual(self.feed([STREAM + half[:7], half[7:]])[-1][0], "select 2")

    def test_a_bad_length_stops_reading(self) -> None:
        """A length below 4 (the server ends the session) stops the framer, no exception."""
        self.assertEqual(self.feed([b"Q\0\0\0\x01" + m.query("select 1")]), [])

    def test_writer_sends_each_chunk_unchanged(self) -> None:
        """The writer forwards the same bytes objects, after logging them."""
        recorder, sent = Recorder(), []
        write = StatementFrames(recorder, 1, 5).writer(sent.append)  # type: ignore[arg-type]
        chunk = m.query("select 3")
        write(chunk)
        self.assertIs(sent[0], chunk)
        self.assertEqual(recorder.seen, [("select 3", ((1, 5),))])

    def test_statement_of(self) -> None:
        """A Query's text, a Parse's query text, None for others; bad UTF-8 replaced."""
        self.assertEqual(statement_of(ord("Q"), b"select 1\0"), "select 1")
        self.assertEqual(statement_of(ord("P"), b"n\0select 2\0\0\0"), "select 2")
        self.assertIsNone(statement_of(ord("B"), b"\0\0"))
        self.assertEqual(statement_of(ord("Q"), b"\xff\0"), "\ufffd")


class LinesTests(SynchronousTestCase):
    def capture(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_statement_lines(self) -> None:
        """pgpool-II's words: plain once, per node once per target; text escaped."""
        events = self.capture()
        statements = statements_for(
            Config(log_statement=True, log_per_node_statement=True), lambda: "c:1"
        )
        assert statements is not None
        statements("select '\n'", [(0, 10), (1, 11)])
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "statement: select '\\n'",
                "DB node id: 0 backend pid: 10 statement: select '\\n'",
                "DB node id: 1 backend pid: 11 statement: select '\\n'",
            ],
        )
        self.assertIsNone(statements_for(Config()))
        self.assertIsInstance(statements_for(Config(log_statement=True)), Statements)

    def test_disconnection_line(self) -> None:
        """PostgreSQL's shape, hours unpadded, ms; a unix-socket client is [local]."""
        events = self.capture()
        counts = Counters()
        counts.bytes_in, counts.bytes_out = 12, 34
        startup = StartupMessage(params=(("user", "u\n"), ("database", "d")))
        log_disconnection("127.0.0.1:5432", startup, 3723.4567, counts)
        log_disconnection("local", startup, 0.0004, None)
        log_disconnection("::1:6000", startup, 1, counts)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "disconnection: session time: 1:02:03.457 user=u\\n database=d "
                "host=127.0.0.1 port=5432 bytes_received=12 bytes_sent=34",
                "disconnection: session time: 0:00:00.000 user=u\\n database=d "
                "host=[local] bytes_received=None bytes_sent=None",
                "disconnection: session time: 0:00:01.000 user=u\\n database=d "
                "host=::1 port=6000 bytes_received=12 bytes_sent=34",
            ],
        )
        self.assertEqual(events[0]["bytes_received"], 12)


class RateLimitTests(SynchronousTestCase):
    """logs/ratelimit.py: one event of a kind logged per interval, the rest counted."""

    def test_more_is_the_line_ending(self) -> None:
        """``more``: None to leave out, else what ends the line, batches counted whole."""
        from pgpool_tw.logs.ratelimit import RateLimit

        limit = RateLimit(1.0)
        self.assertEqual(limit.more(0.0), "")
        self.assertIsNone(limit.more(0.5))
        self.assertIsNone(limit.more(0.6, count=3))
        self.assertEqual(limit.more(1.0), " (4 more since the last)")
        self.assertEqual(limit.more(2.0, count=2), " (1 more since the last)")

    def test_one_a_second_with_the_count_left_out(self) -> None:
        from pgpool_tw.logs.ratelimit import RateLimit

        limit = RateLimit(1.0)
        got = [limit.admit(t / 100) for t in range(250)]  # 2.5 s, 100 events a second
        logged = [n for n in got if n >= 0]
        self.assertEqual(logged, [0, 99, 99])
        self.assertEqual(len(logged) + sum(logged) + limit.admit(10.0), 250)
