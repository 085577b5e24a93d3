"""Tests for pgpool_tw.config.hba: pool_hba.conf syntax, errors and first-match-wins matching."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.hba import (
    ALL,
    REPLICATION,
    SAMEUSER,
    HbaError,
    HbaRule,
    load_hba,
    match,
    no_match_message,
    parse_hba,
    reject_message,
)


def one(text: str) -> HbaRule:
    """The single rule ``text`` holds."""
    rules = parse_hba(text)
    assert len(rules) == 1, rules
    return rules[0]


def tcp(
    rules: tuple[HbaRule, ...], address: str, ssl: bool = False, db: str = "d", user: str = "u"
) -> Optional[HbaRule]:
    """The rule ``match`` picks for a TCP client."""
    return match(rules, local=False, address=address, ssl=ssl, database=db, user=user)


class ParseTests(SynchronousTestCase):
    def test_local_rule(self) -> None:
        """A local rule has keywords for all, no network and the method."""
        rule = one("local all all trust\n")
        self.assertEqual(rule, HbaRule(1, "local", (ALL,), (ALL,), None, "trust", ()))

    def test_comments_and_blank_lines(self) -> None:
        """Comment lines, blank lines and trailing comments are skipped; line numbers count them."""
        rules = parse_hba(
            "# header\n\n   \nlocal all all md5 # why\n\t# indented\nlocal db u reject"
        )
        self.assertEqual([(r.line, r.method) for r in rules], [(4, "md5"), (6, "reject")])

    def test_comment_glued_to_token(self) -> None:
        """An unquoted '#' ends the token and starts a comment."""
        self.assertEqual(one("local all all trust#comment").method, "trust")

    def test_cidr_ipv4_and_ipv6(self) -> None:
        """CIDR addresses in both families become networks."""
        rules = parse_hba("host all all 10.0.0.0/8 md5\nhost all all ::1/128 md5\n")
        self.assertEqual(rules[0].network, ipaddress.ip_network("10.0.0.0/8"))
        self.assertEqual(rules[1].network, ipaddress.ip_network("::1/128"))

    def test_cidr_with_host_bits(self) -> None:
        """Host bits in a CIDR address are masked off, as PostgreSQL does."""
        self.assertEqual(
            one("host all all 10.1.2.3/8 md5").network, ipaddress.ip_network("10.0.0.0/8")
        )

    def test_address_and_netmask(self) -> None:
        """An address followed by a netmask field makes the same network as CIDR."""
        rule = one("host all all 192.168.0.0 255.255.0.0 scram-sha-256")
        self.assertEqual(rule.network, ipaddress.ip_network("192.168.0.0/16"))
        self.assertEqual(rule.method, "scram-sha-256")
        rule6 = one("host all all fe80:: ffff:ffff:ffff:ffff:: md5")
        self.assertEqual(rule6.network, ipaddress.ip_network("fe80::/64"))

    def test_address_all(self) -> None:
        """The address keyword all leaves the network open."""
        rule = one("hostnossl all all all password")
        self.assertEqual(
            (rule.conn_type, rule.network, rule.method), ("hostnossl", None, "password")
        )

    def test_lists_and_quotes(self) -> None:
        """Comma lists (with blanks after commas) and quoted names with blanks and commas."""
        rule = one('host db1,"my db","a,b" u1, u2 127.0.0.1/32 md5')
        self.assertEqual(rule.databases, ("db1", "my db", "a,b"))
        self.assertEqual(rule.users, ("u1", "u2"))

    def test_quoted_keyword_is_a_name(self) -> None:
        """Quoted "all" and "sameuser" are names, distinct from the keywords."""
        rule = one('local "all","sameuser","replication" "all" trust')
        self.assertEqual(rule.databases, ("all", "sameuser", "replication"))
        self.assertEqual(rule.users, ("all",))
        self.assertNotIn(ALL, rule.databases + rule.users)

    def test_database_keywords(self) -> None:
        """sameuser and replication are keywords in the database field."""
        self.assertEqual(
            one("local sameuser,replication all trust").databases, (SAMEUSER, REPLICATION)
        )

    def test_doubled_quote_inside_quotes(self) -> None:
        """Two double quotes inside a quoted token stand for one."""
        self.assertEqual(one('local "a""b" all trust').databases, ('a"b',))

    def test_options(self) -> None:
        """name=value options after the method are kept in order."""
        rule = one("hostssl all all 0.0.0.0/0 cert clientcert=verify-full map=m1")
        self.assertEqual(rule.options, (("clientcert", "verify-full"), ("map", "m1")))
        self.assertEqual(rule.option("map"), "m1")
        self.assertIsNone(rule.option("nope"))

    def test_backslash_continuation(self) -> None:
        """A trailing backslash joins the next line; the rule keeps the first line's number."""
        rules = parse_hba("# x\nhost all all \\\n 127.0.0.1/32 \\\r\n md5\nlocal all all trust\n")
        self.assertEqual([(r.line, r.method) for r in rules], [(2, "md5"), (5, "trust")])

    def test_crlf_lines(self) -> None:
        """Windows line ends are accepted."""
        self.assertEqual(len(parse_hba("local all all trust\r\nlocal all all md5\r\n")), 2)

    def test_load_hba_reads_file(self) -> None:
        """load_hba reads the file and names it in errors."""
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "pool_hba.conf")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write("local all all trust\nhost all all bogus md5\n")
            with self.assertRaises(HbaError) as caught:
                load_hba(path)
            self.assertTrue(str(caught.exception).startswith(f"{path}:2: "), caught.exception)
            missing = os.path.join(directory, "missing")
            with self.assertRaises(HbaError) as caught:
                load_hba(missing)
            self.assertEqual(
                str(caught.exception), f"{missing}: cannot read: No such file or directory"
            )


class ErrorTests(SynchronousTestCase):
    def check(self, text: str, line: int, words: str) -> None:
        """Parsing ``text`` fails on ``line`` with a reason containing ``words``."""
        with self.assertRaises(HbaError) as caught:
            parse_hba(text, "etc/pool_hba.conf")
        error = caught.exception
        self.assertEqual((error.path, error.line), ("etc/pool_hba.conf", line))
        self.assertIn(words, error.reason)
        self.assertEqual(str(error), f"etc/pool_hba.conf:{line}: {error.reason}")
        self.assertNotIn("\n", str(error))

    def test_unknown_method(self) -> None:
        """An unknown or unsupported method names itself."""
        self.check("local all all trust\nlocal all all ident\n", 2, 'method "ident"')
        self.check("local all all pam", 1, 'method "pam"')

    def test_quoted_method_is_not_a_method(self) -> None:
        """A quoted method word is refused."""
        self.check('local all all "trust"', 1, "method")

    def test_unknown_conn_type(self) -> None:
        """An unknown connection type and the GSSAPI ones are refused."""
        self.check("hots all all all md5", 1, 'connection type "hots"')
        self.check("hostgssenc all all all md5", 1, "not supported")

    def test_too_few_fields(self) -> None:
        """Missing fields name what a record needs."""
        self.check("local all all", 1, "too few fields")
        self.check("host all all 10.0.0.0/8", 1, "too few fields")
        self.check("host all all 10.0.0.1 255.0.0.0", 1, "before authentication method")

    def test_bad_addresses(self) -> None:
        """Bad addresses, masks and host names are refused with the reason."""
        self.check("host all all 10.0.0.300/8 md5", 1, "invalid IP address")
        self.check("host all all 10.0.0.0/33 md5", 1, "invalid CIDR mask")
        self.check("host all all 10.0.0.0/x md5", 1, "invalid CIDR mask")
        self.check("host all all 10.0.0.1 md5 trust", 1, 'invalid IP mask "md5"')
        self.check("host all all 10.0.0.1 255.0.255.0 md5", 1, "not contiguous")
        self.check("host all all 10.0.0.1 ffff:: md5", 1, "do not match")
        self.check("host all all db.example.com md5", 1, "host names are not supported")
        self.check("host all all samenet md5", 1, "not supported")
        self.check("host all all samehost md5", 1, "not supported")

    def test_includes_groups_regex_refused(self) -> None:
        """@file, +group, samerole and /regex are refused clearly."""
        self.check("local @dbs all trust", 1, "file inclusion")
        self.check("local all +admins trust", 1, "group")
        self.check("local samerole all trust", 1, "role membership")
        self.check("local all /^a trust", 1, "regular expression")

    def test_unterminated_quote(self) -> None:
        """An unclosed quote is an error on its line."""
        self.check('local "all all trust', 1, "unterminated")

    def test_bad_options(self) -> None:
        """Options must be name=value with a known name, and TLS rules hold."""
        self.check("local all all trust nonsense", 1, "name=value")
        self.check(
            "local all all trust ldapserver=x",
            1,
            'unrecognized authentication option name: "ldapserver"',
        )
        self.check("host all all all cert", 1, "only supported on hostssl")
        self.check("host all all all md5 clientcert=verify-ca", 1, "hostssl")
        self.check("hostssl all all all md5 clientcert=yes", 1, "invalid value for clientcert")

    def test_multiple_values_for_single_fields(self) -> None:
        """A list where one value belongs is refused."""
        self.check("local,host all all trust", 1, "connection type")
        self.check("host all all 10.0.0.0/8,::1/128 md5", 1, "host address")

    def test_empty_name(self) -> None:
        """A quoted empty name is refused."""
        self.check('local "" all trust', 1, "empty database name")

    def test_nul_refused(self) -> None:
        """A NUL character cannot hide a keyword marker in a name."""
        self.check('local "\0all" all trust', 1, "NUL")

    def test_continuation_error_names_first_line(self) -> None:
        """An error in a continued record names the record's first line."""
        self.check("\nhost all all \\\n bogus md5\n", 2, "invalid IP address")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes_raise_only_hba_error(self, data: bytes) -> None:
        """Any bytes in the file either parse or raise HbaError, never anything else."""
        with tempfile.NamedTemporaryFile("wb", suffix=".conf", delete=False) as handle:
            handle.write(data)
        try:
            with contextlib.suppress(HbaError):
                load_hba(handle.name)
        finally:
            os.unlink(handle.name)

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    "local",
                    "host",
                    "hostssl",
                    "all",
                    "sameuser",
                    "md5",
                    "cert",
                    "trust",
                    '"',
                    ",",
                    " ",
                    "\t",
                    "#",
                    "\\\n",
                    "\n",
                    "10.0.0.0/8",
                    "::1",
                    "255.0.0.0",
                    "/",
                    "@x",
                    "+g",
                    "clientcert=verify-full",
                    "=",
                    "a",
                    "::ffff:1.2.3.4/128",
                ]
            ),  # fmt: skip
            max_size=30,
        )
    )
    def test_token_soup_raises_only_hba_error(self, parts: list[str]) -> None:
        """Random mixes of the syntax's own words parse or raise HbaError, nothing else."""
        with contextlib.suppress(HbaError):
            parse_hba("".join(parts))


RULES = parse_hba(
    """
local   all      postgres                 trust
local   all      all                      md5
host    shop     alice     10.1.0.0/16    scram-sha-256
host    all      all       10.0.0.0/8     reject
hostssl sameuser all       192.168.0.0/16 md5
hostnossl all    all       192.168.0.0/16 password
host    "all"    bob       ::1/128        trust
host    all      all       ::/0           md5
"""
)


class MatchTests(SynchronousTestCase):
    def test_local_rules_only_for_local(self) -> None:
        """local rules match unix-socket clients only, first match wins."""
        found = match(RULES, local=True, address=None, ssl=False, database="d", user="postgres")
        self.assertEqual(found, RULES[0])
        found = match(RULES, local=True, address=None, ssl=False, database="d", user="x")
        self.assertEqual(found, RULES[1])
        self.assertEqual(tcp(RULES, "10.9.9.9", user="postgres"), RULES[3])

    def test_first_match_wins(self) -> None:
        """An earlier narrower rule wins over a later broader one, and vice versa."""
        self.assertEqual(tcp(RULES, "10.1.2.3", db="shop", user="alice"), RULES[2])
        self.assertEqual(tcp(RULES, "10.1.2.3", db="shop", user="carol"), RULES[3])
        self.assertEqual(tcp(RULES, "10.200.0.1", db="shop", user="alice"), RULES[3])

    def test_no_match(self) -> None:
        """An address no rule covers gets None."""
        self.assertIsNone(tcp(RULES, "172.16.0.1"))
        self.assertIsNone(tcp(RULES, "not an address"))
        self.assertIsNone(tcp(RULES, ""))

    def test_ssl_kinds(self) -> None:
        """hostssl needs TLS, hostnossl needs its absence, host takes both."""
        self.assertEqual(tcp(RULES, "192.168.1.1", ssl=True, db="u", user="u"), RULES[4])
        self.assertEqual(tcp(RULES, "192.168.1.1", ssl=False, db="u", user="u"), RULES[5])
        self.assertEqual(tcp(RULES, "192.168.1.1", ssl=True, db="other", user="u"), None)
        self.assertEqual(tcp(RULES, "10.1.0.1", ssl=True, db="shop", user="alice"), RULES[2])

    def test_sameuser(self) -> None:
        """sameuser matches when the database is named like the user."""
        self.assertEqual(tcp(RULES, "192.168.1.1", ssl=True, db="kim", user="kim"), RULES[4])
        self.assertIsNone(tcp(RULES, "192.168.1.1", ssl=True, db="kim", user="lee"))

    def test_quoted_all_is_a_database_name(self) -> None:
        """The quoted "all" rule matches only the database called all."""
        self.assertEqual(tcp(RULES, "::1", db="all", user="bob"), RULES[6])
        self.assertEqual(tcp(RULES, "::1", db="shop", user="bob"), RULES[7])

    def test_ipv6(self) -> None:
        """IPv6 clients match IPv6 networks only, and zones are ignored."""
        self.assertEqual(tcp(RULES, "2001:db8::1"), RULES[7])
        self.assertEqual(tcp(RULES, "fe80::1%eth0"), RULES[7])

    def test_ipv4_mapped_matches_ipv4_rules(self) -> None:
        """A ::ffff:a.b.c.d client (pooler on ::) matches the IPv4 rules first."""
        self.assertEqual(tcp(RULES, "::ffff:10.1.2.3", db="shop", user="alice"), RULES[2])
        self.assertEqual(tcp(RULES, "::ffff:10.9.9.9"), RULES[3])

    def test_mask_form_matches(self) -> None:
        """A rule written with a netmask matches like its CIDR twin."""
        rules = parse_hba("host all all 127.0.0.1 255.255.255.255 trust")
        self.assertEqual(tcp(rules, "127.0.0.1"), rules[0])
        self.assertIsNone(tcp(rules, "127.0.0.2"))

    def test_address_all_matches_any_tcp(self) -> None:
        """The address all matches any TCP client but no local one."""
        rules = parse_hba("host all all all md5")
        self.assertEqual(tcp(rules, "203.0.113.9"), rules[0])
        self.assertEqual(tcp(rules, "::ffff:1.2.3.4"), rules[0])
        self.assertIsNone(match(rules, local=True, address=None, ssl=False, database="d", user="u"))

    def test_replication_keyword_never_matches(self) -> None:
        """A replication-only rule does not match ordinary sessions; all does not mean it."""
        rules = parse_hba("local replication all trust\nlocal all all reject")
        found = match(rules, local=True, address=None, ssl=False, database="replication", user="u")
        self.assertEqual(found, rules[1])

    def test_user_lists(self) -> None:
        """A user list matches any of its names and nothing else."""
        rules = parse_hba("local all a,b trust")
        for user, expected in (("a", rules[0]), ("b", rules[0]), ("c", None)):
            found = match(rules, local=True, address=None, ssl=False, database="d", user=user)
            self.assertEqual(found, expected)


class MessageTests(SynchronousTestCase):
    def test_no_match_message_host(self) -> None:
        """The no-match text follows PostgreSQL's wording for TCP clients."""
        self.assertEqual(
            no_match_message("127.0.0.1", "u", "d", False),
            'no pool_hba.conf entry for host "127.0.0.1", user "u", database "d", no encryption',
        )
        self.assertEqual(
            no_match_message("::1", "u", "d", True),
            'no pool_hba.conf entry for host "::1", user "u", database "d", SSL encryption',
        )

    def test_no_match_message_local_and_unknown_ssl(self) -> None:
        """Local clients are [local]; ssl None leaves the encryption part out."""
        self.assertEqual(
            no_match_message(None, "u", "d", None),
            'no pool_hba.conf entry for host "[local]", user "u", database "d"',
        )

    def test_reject_message(self) -> None:
        """The reject text follows PostgreSQL's wording."""
        self.assertEqual(
            reject_message("10.0.0.1", "u", "d", False),
            'pool_hba.conf rejects connection for host "10.0.0.1", user "u", database "d", '
            "no encryption",
        )
