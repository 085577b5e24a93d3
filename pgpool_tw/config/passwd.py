"""pool_passwd: reading its entries, writing one safely, and the CLI that does it.

One entry a line, ``user:secret``, split at the first ':' (so a user name cannot hold one).
The secret is one of pgpool-II's forms:

* ``md5<32 hex>``: PostgreSQL's md5 secret, md5(password + user);
* ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``: PostgreSQL's SCRAM secret,
  as ``pg_authid.rolpassword`` holds it;
* ``TEXT<password>``, or a password with no known prefix (pgpool-II reads both as text);
* ``AES<base64>`` (pgpool-II's pg_enc): not supported, reported as a warning, ignored.

Blank lines and lines starting with '#' are kept as they are.  Unlike pgpool-II, a line
that starts like md5 or SCRAM but is malformed is an error rather than a text password, and
pgpool-II's ``user:pw:backend_user:backend_pw`` mapping is not understood (for a TEXT entry
everything after 'TEXT' is the password).

This module never logs or prints a password or a secret, not even in an error: messages
name the file, the line and the user.  It imports the protocol layer, never Twisted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import getpass
import os
import re
import secrets
import stat
import sys
import tempfile
from typing import Optional, TextIO

from pgpool_tw.protocol.credentials import (
    DEFAULT_ITERATIONS,
    SALT_LENGTH,
    Md5Secret,
    PlainSecret,
    ScramSecret,
    Secret,
    md5_digest,
    scram_keys,
)

__all__ = [
    "Md5Secret",
    "PasswdError",
    "PlainSecret",
    "ScramSecret",
    "Secret",
    "load_passwd",
    "main",
    "md5_entry",
    "parse_passwd",
    "parse_secret",
    "scram_entry",
    "set_entry",
    "text_entry",
]

_MD5 = re.compile(r"md5([0-9a-fA-F]{32})\Z")
_MD5_LIKE = re.compile(r"md5[0-9a-fA-F]*\Z")
_SCRAM = re.compile(r"SCRAM-SHA-256\$([0-9]+):([^$:]+)\$([^$:]+):([^$:]+)\Z")
# Beyond this, deriving keys from a text password for one login would stall the reactor.
MAX_ITERATIONS = 10_000_000


class PasswdError(Exception):
    """A pool_passwd that must not be used, as '<file>:<line>: <reason>'; never the secret."""


def _b64(text: str) -> Optional[bytes]:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def parse_secret(secret: str) -> Secret:
    """One secret (the part after 'user:') as a Secret; ValueError says what is wrong.

    Also reads ``pg_authid.rolpassword`` values, which share the md5 and SCRAM forms.
    AES entries raise ValueError too: the caller decides that they only warrant a warning.
    """
    match = _MD5.match(secret)
    if match:
        return Md5Secret(match.group(1).lower())
    if _MD5_LIKE.match(secret):
        # pgpool-II would read a truncated md5 hash as a text password; we refuse it.
        raise ValueError("an md5 entry needs exactly 32 hex digits after 'md5'")
    if secret.startswith("SCRAM-SHA-256$"):
        scram = _SCRAM.match(secret)
        if scram is None:
            raise ValueError(
                "a SCRAM entry must read SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
            )
        iterations = int(scram.group(1))
        salt, stored, server = (_b64(scram.group(n)) for n in (2, 3, 4))
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"SCRAM iteration count must be from 1 to {MAX_ITERATIONS}")
        if not salt or stored is None or server is None:
            raise ValueError("SCRAM salt and keys must be base64")
        if len(stored) != 32 or len(server) != 32:
            raise ValueError("SCRAM StoredKey and ServerKey must be 32 bytes each")
        return ScramSecret(iterations, salt, stored, server)
    if secret.startswith("AES"):
        raise ValueError("AES-encrypted entries (pgpool-II's pg_enc) are not supported")
    password = secret[4:] if secret.startswith("TEXT") else secret
    if not password:
        raise ValueError("the password is empty")
    return PlainSecret(password)


def parse_passwd(text: str, path: str = "pool_passwd") -> tuple[dict[str, Secret], list[str]]:
    """Entries by user, and warnings; a malformed line raises PasswdError.

    For a user listed twice the first line wins, as in pgpool-II, and the others warn.
    """
    entries: dict[str, Secret] = {}
    first_line: dict[str, int] = {}
    warnings: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        user, colon, secret = line.partition(":")
        if not colon:
            raise PasswdError(f"{where}: expected 'user:secret' (no ':' found)")
        if not user:
            raise PasswdError(f"{where}: the user name before ':' is empty")
        if secret.startswith("AES"):
            warnings.append(
                f'{where}: user "{user}": AES-encrypted entries (pg_enc) are not supported; '
                "entry ignored (write an md5, SCRAM or TEXT entry with pgpool-tw-passwd)"
            )
            continue
        try:
            parsed = parse_secret(secret)
        except ValueError as e:
            raise PasswdError(f'{where}: user "{user}": {e}') from None
        if user in entries:
            warnings.append(
                f'{where}: user "{user}" is also on line {first_line[user]}; this line is ignored'
            )
            continue
        entries[user] = parsed
        first_line[user] = number
    return entries, warnings


def load_passwd(path: str) -> tuple[dict[str, Secret], list[str]]:
    """Read and parse ``path``; warns when group or others may read it."""
    try:
        with open(path, encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            text = handle.read()
    except OSError as e:
        raise PasswdError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PasswdError(f"{path}: cannot read: not UTF-8 text ({e.reason})") from None
    entries, warnings = parse_passwd(text, path)
    if mode & 0o077:
        warnings.insert(
            0,
            f"{path}: group or others can access this file (mode {stat.S_IMODE(mode):04o}); "
            f"run chmod 0600 {path}",
        )
    return entries, warnings


# --- writing entries --------------------------------------------------------------


def _check_user(user: str) -> None:
    if not user or ":" in user or "\n" in user or "\r" in user or user.startswith("#"):
        raise ValueError("a pool_passwd user name must be non-empty, without ':' or newlines")


def _check_password(password: str) -> None:
    if not password or "\n" in password or "\r" in password or "\0" in password:
        raise ValueError("the password must be non-empty, without newlines or NUL")


def md5_entry(user: str, password: str) -> str:
    """``user:md5…``: what pg_md5 -m writes and PostgreSQL's md5 secret for the user."""
    _check_user(user)
    _check_password(password)
    return f"{user}:md5{md5_digest(password, user)}"


def scram_entry(
    user: str, password: str, iterations: int = DEFAULT_ITERATIONS, salt: Optional[bytes] = None
) -> str:
    """``user:SCRAM-SHA-256$…``, the secret PostgreSQL would store for this password."""
    _check_user(user)
    _check_password(password)
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be from 1 to {MAX_ITERATIONS}")
    salt = secrets.token_bytes(SALT_LENGTH) if salt is None else salt
    if not salt:
        raise ValueError("the salt must not be empty")
    _, stored_key, server_key = scram_keys(password, salt, iterations)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"{user}:SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def text_entry(user: str, password: str) -> str:
    """``user:TEXT<password>``: the one form that can answer every server method."""
    _check_user(user)
    _check_password(password)
    return f"{user}:TEXT{password}"


def set_entry(path: str, user: str, entry_line: str) -> None:
    """Put ``entry_line`` in place of ``user``'s line (or append it), atomically.

    Other lines, comments and their order are kept; later duplicate lines of the same user
    are dropped so the file says one thing.  The new content goes to a temporary file in the
    same directory that is then renamed over the old one, so a reader never sees half a
    file.  A new file gets mode 0600; an existing one keeps its mode and, where allowed, its
    owner.
    """
    _check_user(user)
    name, colon, secret = entry_line.partition(":")
    if name != user or not colon or "\n" in entry_line:
        raise ValueError(f'the entry line is not a single line for user "{user}"')
    parse_secret(secret)  # refuse to write what we would refuse to read
    try:
        with open(path, encoding="utf-8") as handle:
            old = handle.read()
            info: Optional[os.stat_result] = os.fstat(handle.fileno())
    except FileNotFoundError:
        old, info = "", None
    lines = old.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    placed = False
    for line in lines:
        is_entry = line.strip() and not line.startswith("#")
        if is_entry and line.partition(":")[0] == user:
            if not placed:
                out.append(entry_line)
                placed = True
            continue
        out.append(line)
    if not placed:
        out.append(entry_line)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".pool_passwd.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            # mkstemp already made it 0600; keep an existing file's mode and owner.
            if info is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(info.st_mode))
                with contextlib.suppress(PermissionError):  # only root may give files away
                    os.fchown(handle.fileno(), info.st_uid, info.st_gid)
            handle.write("\n".join(out) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


# --- the CLI ----------------------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """argparse would exit 2 with two lines; we promise 1 with one line."""
        raise _UsageError(message)


def _parser() -> _Parser:
    parser = _Parser(
        prog="pgpool-tw-passwd",
        description="Add or replace one user's entry in pool_passwd. "
        "The password is read without echo (twice), or as one line from stdin.",
    )
    parser.add_argument(
        "-f", "--file", default="pool_passwd", help="the pool_passwd file (default: ./pool_passwd)"
    )
    form = parser.add_mutually_exclusive_group()
    for form_name, text in (
        ("scram", "store a SCRAM-SHA-256 secret (the default)"),
        ("md5", "store an md5 secret"),
        ("text", "store the password itself (what cleartext servers need)"),
    ):
        form.add_argument(
            f"--{form_name}", dest="form", action="store_const", const=form_name, help=text
        )
    parser.add_argument("--stdin", action="store_true", help="read the password from stdin")
    parser.add_argument("user", help="the user name")
    parser.set_defaults(form="scram")
    return parser


def _read_password(use_stdin: bool, stdin: TextIO) -> str:
    if use_stdin:
        line = stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the passwords do not match")
    return first


def main(argv: Optional[list[str]] = None) -> int:
    """``pgpool-tw-passwd [-f pool_passwd] [--md5|--scram|--text] [--stdin] USER``."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        print(f"pgpool-tw-passwd: {e}", file=sys.stderr)
        return 1
    try:
        password = _read_password(args.stdin, sys.stdin)
        password = password[:-1] if password.endswith("\r") else password
        builders = {"scram": scram_entry, "md5": md5_entry, "text": text_entry}
        entry = builders[args.form](args.user, password)
        set_entry(args.file, args.user, entry)
    except OSError as e:
        print(f"pgpool-tw-passwd: {args.file}: {e.strerror or e}", file=sys.stderr)
        return 1
    except (ValueError, EOFError) as e:
        print(f"pgpool-tw-passwd: {e or 'no password given'}", file=sys.stderr)
        return 1
    print(f'{args.file}: stored a {args.form} entry for user "{args.user}"')
    return 0
