"""``log_destination = 'jsonlog'``: one JSON object per line, for log shippers.

Each line holds the event's time (UTC, ISO 8601 with milliseconds), its level, its
namespace (the module that logged it), the formatted message, the process id, and the
event's own fields that are plain values (``client``, ``user``, ``database``, ``pid``,
``node``, ...): what a text line says in words, a shipper can index.  A failure adds its
traceback.  Client-supplied values were escaped where they were logged (``escape.py``);
JSON escapes the rest.

Under ``twistd pgpool``, ``tap.py`` hands twistd an observer writing to the file twistd
itself would have chosen (``--logfile``, or stdout with ``-n``); an embedding application
calls :func:`json_observer` with its own file.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any, Optional

from twisted.logger import FileLogObserver, ILogObserver, formatEvent, globalLogBeginner
from twisted.python.logfile import LogFile

__all__ = ["json_line", "json_observer", "start_json_logging", "twistd_observer"]

#: The line's own keys; an event field of the same name is left out.
_OWN = ("timestamp", "level", "namespace", "message", "process_id", "traceback")
#: Keys of Twisted's legacy events that the line's own keys already say.
_LEGACY = frozenset({"time", "isError", "format", "printed", "why", "failure", "message"})


def json_line(event: dict[str, Any], process_id: Optional[int] = None) -> str:
    """One event as one line of JSON (no newline inside: JSON escapes control characters)."""
    when = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "timestamp": (
            datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
            if isinstance(when, (int, float))
            else None
        ),
        "level": getattr(level, "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
        "process_id": os.getpid() if process_id is None else process_id,
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _OWN or key in _LEGACY:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            record[key] = value
    return json.dumps(record, ensure_ascii=False, default=str)


def json_observer(out: IO[str]) -> ILogObserver:
    """An observer writing each event to ``out`` as a JSON line (flushed per event)."""
    process_id = os.getpid()
    return FileLogObserver(out, lambda event: json_line(event, process_id) + "\n")


def start_json_logging(out: IO[str] = sys.stdout) -> None:
    """For an embedding application that has not begun logging: JSON lines to ``out``."""
    globalLogBeginner.beginLoggingTo([json_observer(out)])


def twistd_observer(options: Any) -> Optional[ILogObserver]:
    """The JSON observer for twistd's own options (``--logfile``, ``--nodaemon``), writing
    where twistd's text observer would have; None where twistd must decide itself
    (``--syslog``, or a daemon told to log to stdout, which twistd refuses)."""
    if options is None or options.get("syslog"):
        return None
    name = options.get("logfile")
    nodaemon = options.get("nodaemon")
    if name == "-":
        if not nodaemon:
            return None
        return json_observer(sys.stdout)
    if nodaemon and not name:
        return json_observer(sys.stdout)
    return json_observer(LogFile.fromFullPath(name or "twistd.log"))
