"""``pgpool-tw-demo`` (what ``scripts/run`` runs): a throwaway PostgreSQL with the pooler in front.

Owns: the demo's pgpool.conf, running ``twistd pgpool`` as a child, and passing SIGINT and
SIGTERM on to it so that a supervisor's or a terminal's stop reaches the pooler.

Must never: signal any process but the child it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from types import FrameType
from typing import Optional

from pgpool_tw_dev.devdb import TempPostgres, quote_conf

# ``python -m twisted`` is ``twist``, which has no ``-n``; this is ``twistd`` itself.
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def _twistd_argv(conf: str) -> list[str]:
    return [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "pgpool", "-c", conf]


def _run_forwarding_signals(argv: list[str]) -> int:
    """Run argv as a child in its own session; pass SIGINT/SIGTERM on; return its status."""
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: Optional[FrameType]) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # Handlers go in before the fork: a child inherits an *ignored* SIGINT (as under `cmd &`)
    # across exec, and then Twisted would not handle it; a handled one resets to default.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        children.append(subprocess.Popen(argv, start_new_session=True))
        returncode = children[0].wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - returncode if returncode < 0 else returncode


def demo_conf(pg: TempPostgres, port: int, socket_dir: str) -> str:
    """The pgpool.conf text for a pooler on ``port`` in front of ``pg``."""
    lines = [
        "# Written by pgpool-tw-demo",
        f"backend_hostname0 = {quote_conf(pg.host)}",
        f"backend_port0 = {pg.port}",
        f"port = {port}",
        "listen_addresses = 'localhost'",
        f"socket_dir = {quote_conf(socket_dir)}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``pgpool-tw-demo``: a throwaway PostgreSQL with the pooler in front."""
    parser = argparse.ArgumentParser(
        prog="pgpool-tw-demo",
        description="Start a throwaway PostgreSQL and run pgpool-tw in front of it "
        "(or, with -c, just run the pooler with that config).",
    )
    parser.add_argument("-c", "--config", metavar="PATH", help="run twistd pgpool with PATH")
    parser.add_argument("--port", type=int, default=9999, help="pooler port (default 9999)")
    args = parser.parse_args(argv)
    if args.config:
        return _run_forwarding_signals(_twistd_argv(args.config))

    conf_dir = tempfile.mkdtemp(prefix="pgpool-tw-demo-")
    try:
        print("starting a throwaway PostgreSQL ...", flush=True)
        with TempPostgres(auth_method="trust") as pg:
            pg.create_database("demo")
            conf = os.path.join(conf_dir, "pgpool.conf")
            with open(conf, "w", encoding="utf-8") as f:
                f.write(demo_conf(pg, args.port, conf_dir))
            print(
                f"PostgreSQL {pg.bindir} listens on {pg.host}:{pg.port} (data in {pg.data_dir})\n"
                f"pgpool-tw listens on localhost:{args.port} and in {conf_dir}; config {conf}\n"
                "connect with:\n"
                f"    psql -h 127.0.0.1 -p {args.port} -U postgres demo\n"
                f"    psql -h {conf_dir} -p {args.port} -U postgres demo\n"
                "stop with Ctrl-C",
                flush=True,
            )
            return _run_forwarding_signals(_twistd_argv(conf))
    finally:
        shutil.rmtree(conf_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
