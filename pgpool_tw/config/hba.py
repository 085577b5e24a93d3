"""pool_hba.conf: parsing it into frozen rules, and choosing the rule for a connection.

The syntax is PostgreSQL's pg_hba.conf, which pgpool-II's pool_hba.conf shares: one record
a line (a trailing backslash continues it), '#' comments, fields split on blanks, double
quotes around text holding blanks, commas or '#', and comma lists in the database and user
fields.  A quoted word is a name, never a keyword: ``"all"`` is the database called all.

What the pooler cannot honour is refused with a reason rather than half-supported: ``@file``
includes, ``+group`` membership, ``samerole``, ``/regex`` names, ``samehost``/``samenet``,
host names, the GSSAPI connection types and every method beyond trust, reject, password,
md5, scram-sha-256 and cert.  Keywords are stored with a leading NUL (``ALL``,
``SAMEUSER``, ``REPLICATION``), which no name can carry, so a quoted "all" stays a name.

Nothing here does I/O except ``load_hba`` reading the file; nothing imports Twisted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Union

__all__ = [
    "ALL",
    "METHODS",
    "NO_MATCH_SQLSTATE",
    "REPLICATION",
    "SAMEUSER",
    "HbaError",
    "HbaRule",
    "load_hba",
    "match",
    "no_match_message",
    "parse_hba",
    "reject_message",
]

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_KEYWORD = "\0"
ALL = _KEYWORD + "all"
SAMEUSER = _KEYWORD + "sameuser"
REPLICATION = _KEYWORD + "replication"  # matches only replication connections: never here

CONN_TYPES = ("local", "host", "hostssl", "hostnossl")
METHODS = ("trust", "reject", "password", "md5", "scram-sha-256", "cert")
NO_MATCH_SQLSTATE = "28000"  # invalid_authorization_specification, as PostgreSQL sends
_OPTIONS = ("clientcert", "map")
_BLANKS = " \t\r"


class HbaError(Exception):
    """A pool_hba.conf that must not be used, told as '<file>:<line>: <reason>'."""

    def __init__(self, path: str, line: Optional[int], reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class HbaRule:
    """One record; ``network`` is None for local rules and for the address ``all``."""

    line: int
    conn_type: str
    databases: tuple[str, ...]
    users: tuple[str, ...]
    network: Optional[IPNetwork]
    method: str
    options: tuple[tuple[str, str], ...] = ()

    def option(self, name: str) -> Optional[str]:
        for key, value in self.options:
            if key == name:
                return value
        return None


Token = tuple[str, bool]  # (text, quoted)


def _tokenize(text: str, fail: _Fail) -> list[list[Token]]:
    """Fields of one record, each a list of tokens; PostgreSQL's next_token rules."""
    fields: list[list[Token]] = []
    current: list[Token] = []
    pos, end = 0, len(text)
    while True:
        # Blanks and stray commas before a token are skipped, as PostgreSQL does.
        while pos < end and (text[pos] in _BLANKS or text[pos] == ","):
            pos += 1
        if pos >= end or text[pos] == "#":
            break
        chars: list[str] = []
        quoted = in_quote = comma = False
        while pos < end:
            char = text[pos]
            if char == '"':
                if in_quote and text.startswith('"', pos + 1):
                    chars.append('"')  # "" inside quotes is one literal quote
                    pos += 2
                    continue
                in_quote, quoted = not in_quote, True
            elif in_quote:
                chars.append(char)
            elif char in _BLANKS:
                break
            elif char == ",":
                comma = True
                pos += 1
                break
            elif char == "#":
                pos = end  # the rest of the line is a comment
                break
            else:
                chars.append(char)
            pos += 1
        if in_quote:
            raise fail("unterminated quoted string")
        current.append(("".join(chars), quoted))
        if not comma:
            fields.append(current)
            current = []
    if current:
        fields.append(current)
    return fields


class _Fail:
    """Builds HbaErrors for one record, so each check states only its reason."""

    def __init__(self, path: str, line: int) -> None:
        self.path, self.line = path, line

    def __call__(self, reason: str) -> HbaError:
        return HbaError(self.path, self.line, reason)


def _single(field: list[Token], what: str, fail: _Fail) -> Token:
    if len(field) != 1:
        raise fail(f"multiple values specified for {what}")
    return field[0]


def _names(field: list[Token], what: str, keywords: dict[str, str], fail: _Fail) -> tuple[str, ...]:
    out: list[str] = []
    for text, quoted in field:
        if not text:
            raise fail(f"empty {what} name")
        if not quoted:
            if text in keywords:
                out.append(keywords[text])
                continue
            if text in ("samerole", "samegroup"):
                raise fail(f'"{text}" is not supported: the pooler does not know role membership')
            if text.startswith("@"):
                raise fail(f'file inclusion "{text}" is not supported; list the names here')
            if text.startswith("+"):
                raise fail(f'group "{text}" is not supported: the pooler does not know members')
            if text.startswith("/"):
                raise fail(f'regular expression "{text}" is not supported; list the names')
        out.append(text)
    return tuple(out)


def _network(address: Token, mask: Optional[Token], fail: _Fail) -> Optional[IPNetwork]:
    """The address field (and the netmask field when the address has no /prefix)."""
    text, quoted = address
    if not quoted and text == "all":
        return None
    if not quoted and text in ("samehost", "samenet"):
        raise fail(f'"{text}" is not supported; write the network as an address/prefix')
    base, slash, prefix = text.partition("/")
    try:
        host = ipaddress.ip_address(base)
    except ValueError:
        raise fail(
            f'invalid IP address "{text}" (host names are not supported; '
            "write an address with a /prefix or a netmask)"
        ) from None
    if slash:
        if not prefix.isdigit() or int(prefix) > host.max_prefixlen:
            raise fail(f'invalid CIDR mask in address "{text}"')
        return ipaddress.ip_network(f"{host}/{int(prefix)}", strict=False)
    if mask is None:
        raise fail(f'end-of-line before netmask specification for address "{text}"')
    try:
        netmask = ipaddress.ip_address(mask[0])
    except ValueError:
        raise fail(f'invalid IP mask "{mask[0]}"') from None
    if netmask.version != host.version:
        raise fail("IP address and mask do not match")
    bits = int(netmask)
    inverted = bits ^ ((1 << host.max_prefixlen) - 1)
    if inverted & (inverted + 1):  # the ones must be contiguous from the left
        raise fail(f'IP mask "{mask[0]}" is not contiguous; write the network as address/prefix')
    length = host.max_prefixlen - inverted.bit_length()
    return ipaddress.ip_network(f"{host}/{length}", strict=False)


def _rule(fields: list[list[Token]], line: int, fail: _Fail) -> HbaRule:
    conn_type, quoted = _single(fields[0], "connection type", fail)
    if conn_type in ("hostgssenc", "hostnogssenc"):
        raise fail(f'connection type "{conn_type}" is not supported')
    if conn_type not in CONN_TYPES or quoted:
        raise fail(f'invalid connection type "{conn_type}"; expected {", ".join(CONN_TYPES)}')
    local = conn_type == "local"
    needed = 4 if local else 5
    if len(fields) < needed:
        what = (
            ("database", "user", "method") if local else ("database", "user", "address", "method")
        )
        raise fail(f"too few fields; expected {conn_type} {' '.join(w.upper() for w in what)}")
    databases = _names(
        fields[1], "database", {"all": ALL, "sameuser": SAMEUSER, "replication": REPLICATION}, fail
    )
    users = _names(fields[2], "user", {"all": ALL}, fail)
    rest = fields[3:]
    network: Optional[IPNetwork] = None
    if not local:
        address = _single(rest[0], "host address", fail)
        needs_mask = "/" not in address[0] and (address[1] or address[0] != "all")
        mask = _single(rest[1], "netmask", fail) if needs_mask and len(rest) > 1 else None
        network = _network(address, mask, fail)
        rest = rest[2:] if needs_mask else rest[1:]
        if not rest:
            raise fail("end-of-line before authentication method")
    method, quoted = _single(rest[0], "authentication method", fail)
    if method not in METHODS or quoted:
        raise fail(
            f'invalid or unsupported authentication method "{method}"; '
            f"expected {', '.join(METHODS)}"
        )
    options: list[tuple[str, str]] = []
    for field in rest[1:]:
        for text, _ in field:
            name, equals, value = text.partition("=")
            if not equals or not name:
                raise fail(f'authentication option not in name=value format: "{text}"')
            if name not in _OPTIONS:
                raise fail(f'unrecognized authentication option name: "{name}"')
            options.append((name, value))
    rule = HbaRule(line, conn_type, databases, users, network, method, tuple(options))
    _check_tls(rule, fail)
    return rule


def _check_tls(rule: HbaRule, fail: _Fail) -> None:
    """PostgreSQL's rules tying cert and clientcert to hostssl."""
    clientcert = rule.option("clientcert")
    if rule.method == "cert" and rule.conn_type != "hostssl":
        raise fail("cert authentication is only supported on hostssl connections")
    if clientcert is not None:
        if rule.conn_type != "hostssl":
            raise fail("clientcert can only be configured for hostssl rows")
        if clientcert not in ("verify-ca", "verify-full"):
            raise fail('invalid value for clientcert: expected "verify-ca" or "verify-full"')
        if rule.method == "cert" and clientcert != "verify-full":
            raise fail('clientcert only accepts "verify-full" when using "cert" authentication')


def parse_hba(text: str, path: str = "pool_hba.conf") -> tuple[HbaRule, ...]:
    """All rules in file order; the first error raises HbaError naming its line."""
    rules: list[HbaRule] = []
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        number = index + 1
        record = lines[index].rstrip("\r")
        index += 1
        # A trailing backslash joins the next line (PostgreSQL 16), even inside a comment.
        while record.endswith("\\") and index < len(lines):
            record = record[:-1] + lines[index].rstrip("\r")
            index += 1
        fail = _Fail(path, number)
        if "\0" in record:
            raise fail("NUL character in record")
        fields = _tokenize(record, fail)
        if fields:
            rules.append(_rule(fields, number, fail))
    return tuple(rules)


def load_hba(path: str) -> tuple[HbaRule, ...]:
    """Read and parse the file at ``path``; any failure is one HbaError."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as e:
        raise HbaError(path, None, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise HbaError(path, None, f"cannot read: not UTF-8 text ({e.reason})") from None
    return parse_hba(text, path)


# --- matching ---------------------------------------------------------------------


def _client_addresses(address: Optional[str]) -> tuple[IPAddress, ...]:
    """The client address, plus its IPv4 form when it is IPv4-mapped IPv6 (::ffff:a.b.c.d)."""
    if not address:
        return ()
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return ()
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return (parsed, parsed.ipv4_mapped)
    return (parsed,)


def _database_matches(tokens: Iterable[str], database: str, user: str) -> bool:
    for token in tokens:
        if token in (ALL, database) or (token == SAMEUSER and database == user):
            return True
    return False


def match(
    rules: Iterable[HbaRule],
    *,
    local: bool,
    address: Optional[str],
    ssl: bool,
    database: str,
    user: str,
) -> Optional[HbaRule]:
    """The first rule that fits the connection, or None (the caller must then refuse it)."""
    clients = () if local else _client_addresses(address)
    for rule in rules:
        kind = rule.conn_type
        if kind == "local":
            if not local:
                continue
        elif local or (kind == "hostssl" and not ssl) or (kind == "hostnossl" and ssl):
            continue
        elif rule.network is not None:
            network = rule.network
            if not any(c.version == network.version and c in network for c in clients):
                continue
        if not _database_matches(rule.databases, database, user):
            continue
        if ALL in rule.users or user in rule.users:
            return rule
    return None


def _connection(address: Optional[str], user: str, database: str, ssl: Optional[bool]) -> str:
    text = f'host "{address or "[local]"}", user "{user}", database "{database}"'
    if ssl is None:
        return text
    return text + (", SSL encryption" if ssl else ", no encryption")


def no_match_message(address: Optional[str], user: str, database: str, ssl: Optional[bool]) -> str:
    """PostgreSQL's words when no rule fits; ``address`` None means a unix socket."""
    return "no pool_hba.conf entry for " + _connection(address, user, database, ssl)


def reject_message(address: Optional[str], user: str, database: str, ssl: Optional[bool]) -> str:
    """PostgreSQL's words when the matching rule's method is reject."""
    return "pool_hba.conf rejects connection for " + _connection(address, user, database, ssl)
