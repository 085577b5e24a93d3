"""Tests for pgpool_tw.engine._speedups' shape_key: the C loop's routing-table key.

A wrong key is a routing bug, "no key" never is.  So besides examples of every rule,
hypothesis renders statement templates twice with different literals and, whenever
the two keys are equal, checks with PostgreSQL's own scanner and parser (pglast) that
the texts really have one shape: the same tokens but for the constants' values, the
same ``normalize`` (where it replaces every constant), and the same Classifier verdict.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import pglast.parser
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast.keywords import (
    COL_NAME_KEYWORDS,
    RESERVED_KEYWORDS,
    TYPE_FUNC_NAME_KEYWORDS,
    UNRESERVED_KEYWORDS,
)
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster.classify import Classifier, Verdict
from pgpool_tw.engine.speedups import speedups

SKIP = (
    "pgpool_tw.engine._speedups is not built (or PGPOOL_TW_PURE_PYTHON is set)"
    if not speedups
    else ""
)

PGBENCH_S = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
TPC_B = [
    b"UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5;",
    b"SELECT abalance FROM pgbench_accounts WHERE aid = 5;",
    b"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
    b" VALUES (3, 1, 7, 99, CURRENT_TIMESTAMP);",
    b"BEGIN;",
    b"END;",
]


def key(data: bytes) -> Optional[bytes]:
    assert speedups is not None
    result: Optional[bytes] = speedups.shape_key(data)
    return result


class ExampleTests(SynchronousTestCase):
    """One example per rule of _shape.c."""

    skip = SKIP or None

    def test_pgbench_select_only_shares_a_key(self) -> None:
        """pgbench -S's text with any aid has one key, with the number as one byte."""
        self.assertEqual(key(PGBENCH_S), b"SELECT abalance FROM pgbench_accounts WHERE aid = \x01;")
        self.assertEqual(key(PGBENCH_S.replace(b"12345", b"7")), key(PGBENCH_S))

    def test_tpc_b_statements_have_distinct_keys(self) -> None:
        """Each TPC-B statement has a key, and no two share one."""
        keys = [key(text) for text in TPC_B]
        self.assertNotIn(None, keys)
        self.assertEqual(len(set(keys)), len(TPC_B))
        self.assertEqual(key(TPC_B[0]), key(TPC_B[0].replace(b"1234", b"77").replace(b"5", b"6")))

    def test_identifier_digits_are_the_identifier(self) -> None:
        """Digits inside a name are part of it: t1 and t2 differ."""
        self.assertNotEqual(key(b"SELECT * FROM t1"), key(b"SELECT * FROM t2"))
        self.assertEqual(key(b"SELECT * FROM t1"), b"SELECT * FROM t1")
        self.assertEqual(
            key(b"SELECT _9x FROM pgbench_accounts2"), b"SELECT _9x FROM pgbench_accounts2"
        )

    def test_case_is_kept(self) -> None:
        """Names and keywords are copied as written."""
        self.assertNotEqual(key(b"select a from t"), key(b"SELECT a FROM t"))

    def test_strings_share_a_key(self) -> None:
        """String literals, with '' inside, become one byte whatever they hold."""
        self.assertEqual(key(b"SELECT 'a'"), key(b"SELECT 'b'"))
        self.assertEqual(key(b"SELECT 'it''s -- /* \"x\"'"), b"SELECT \x02")
        self.assertEqual(key(b"SELECT ''"), b"SELECT \x02")

    def test_number_and_string_differ(self) -> None:
        """1 and '1' are different constants."""
        self.assertNotEqual(key(b"SELECT 1"), key(b"SELECT '1'"))

    def test_integer_and_other_numbers_differ(self) -> None:
        """ICONST and FCONST get different bytes: char(5) parses, char(5.5) does not."""
        self.assertEqual(key(b"char(5)"), b"char(\x01)")
        for text in (b"5.5", b"5.", b"1e5", b"1.e-3", b"2E+10", b"2147483648", b"99999999999"):
            self.assertEqual(key(text), b"\x03", text)
        for text in (b"0", b"2147483647", b"0002147483647", b"000000000000000"):
            self.assertEqual(key(text), b"\x01", text)

    def test_quoted_identifiers_are_copied(self) -> None:
        """A "quoted" name, with "" inside, is kept verbatim: its contents are a name."""
        text = b'SELECT "a""b\'c" FROM "T 1"'
        self.assertEqual(key(text), text)
        self.assertNotEqual(key(b'SELECT "a"'), key(b'SELECT "b"'))

    def test_layout_is_kept(self) -> None:
        """Whitespace and punctuation are copied: a different layout is a different key."""
        self.assertEqual(key(b"SELECT\t1\r\n;"), b"SELECT\t\x01\r\n;")
        self.assertNotEqual(key(b"SELECT 1"), key(b"SELECT  1"))
        self.assertEqual(key(b"x = -1"), b"x = -\x01")

    def test_adjacent_strings(self) -> None:
        """Two strings continued across a newline keep their layout."""
        self.assertEqual(key(b"SELECT 'a'\n'b'"), b"SELECT \x02\n\x02")

    def test_empty_text(self) -> None:
        """An empty text has the empty key (Python never inserts it: it is no SELECT)."""
        self.assertEqual(key(b""), b"")

    def test_aborts(self) -> None:
        """Every construct the key's rules cannot vouch for has no key."""
        cases = {
            "byte >= 0x80": "SELECT 'é'".encode(),
            "control byte": b"SELECT\x0b1",
            "NUL": b"SELECT 1\x00",
            "DEL": b"SELECT 1\x7f",
            "form feed": b"SELECT\x0c1",
            "dollar quote": b"SELECT $$a$$",
            "parameter": b"SELECT $1",
            "identifier with $": b"SELECT a$b",
            "dollar in a string": b"SELECT '$'",
            "backslash": b"SELECT 'a\\b'",
            "backslash outside a string": b"SELECT 1 \\g",
            "line comment": b"SELECT 1 -- x",
            "block comment": b"SELECT /* x */ 1",
            "unterminated string": b"SELECT 'a",
            "unterminated string after ''": b"SELECT 'a''",
            "unterminated quoted identifier": b'SELECT "a',
            "escape string": b"SELECT E'a'",
            "bit string": b"SELECT B'101'",
            "hex string": b"SELECT X'1F'",
            "national string": b"SELECT N'a'",
            "typed literal without a space": b"SELECT date'2020-01-01'",
            "unicode string": b"SELECT U&'d!0061t' UESCAPE '!'",
            "unicode identifier": b"SELECT U&\"d!0061t\" UESCAPE '!'",
            "number then letters": b"SELECT 1abc",
            "hexadecimal integer": b"SELECT 0x1F",
            "underscore in a number": b"SELECT 1_000",
            "number then two dots": b"SELECT 1..2",
            "number then a dot": b"SELECT 1.5.3",
            "exponent without digits": b"SELECT 1e",
            "exponent sign without digits": b"SELECT 1e+",
            "exponent then letters": b"SELECT 1e5x",
            "number then quote": b"SELECT 1'a'",
            "leading dot": b"SELECT .5",
            "dot digit after a name": b"SELECT t.5",
            "too long": b"SELECT " + b" " * 8192 + b"1",
        }
        for name, text in cases.items():
            self.assertIsNone(key(text), name)

    def test_comment_markers_inside_literals_are_fine(self) -> None:
        """-- and /* inside a string or a quoted name are not comments."""
        self.assertEqual(key(b"SELECT '--', \"/*\""), b'SELECT \x02, "/*"')

    def test_operators_are_copied(self) -> None:
        """Operators (not comments) are copied: a - b, a / b, a & b, */."""
        text = b"SELECT a - b / c & d */ e, 1-2, a.b, x::int"
        self.assertEqual(key(text), text.replace(b"1-2", b"\x01-\x01"))

    def test_buffers(self) -> None:
        """bytearray and memoryview are read as bytes; str is refused."""
        self.assertEqual(key(bytearray(PGBENCH_S)), key(PGBENCH_S))
        self.assertEqual(key(memoryview(PGBENCH_S)), key(PGBENCH_S))
        self.assertRaises(TypeError, key, "SELECT 1")  # type: ignore[arg-type]


# -- the soundness property -------------------------------------------------------

_KEYWORDS = frozenset(
    word.lower()
    for group in (
        RESERVED_KEYWORDS,
        UNRESERVED_KEYWORDS,
        COL_NAME_KEYWORDS,
        TYPE_FUNC_NAME_KEYWORDS,
    )
    for word in group
)
NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True).filter(
    lambda s: s.lower() not in _KEYWORDS
)
NAME = st.one_of(NAME, NAME.map(lambda s: f'"{s}"'), st.sampled_from(["pg_class", "t1", "t2"]))
# Mostly one space: the texts must parse to be worth comparing.
WS = st.sampled_from([" ", " ", " ", "  ", "\n", "\t", " \r\n ", ""])

_STRING_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="$\\")
# The kinds of literal a slot may hold; a pair of renderings keeps a slot's kind
# most of the time (else keys rarely match), not always.
LITERALS: dict[str, st.SearchStrategy[str]] = {
    "int": st.integers(0, 2**31 - 1).map(str),
    "zeros": st.tuples(st.integers(1, 12), st.integers(0, 2**31 - 1)).map(
        lambda z: "0" * z[0] + str(z[1])
    ),
    "big": st.integers(2**31, 10**30).map(str),
    "decimal": st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.booleans()).map(
        lambda d: f"{d[0]}." + (str(d[1]) if d[2] else "")
    ),
    "exponent": st.tuples(
        st.integers(0, 999),
        st.sampled_from(["e", "E", "e+", "E-", ".e", ".5e-"]),
        st.integers(0, 99),
    ).map(lambda e: f"{e[0]}{e[1]}{e[2]}"),
    "string": st.text(_STRING_CHARS, max_size=8).map(lambda s: "'" + s.replace("'", "''") + "'"),
    "negative": st.integers(0, 10**6).map(lambda i: f"-{i}"),
}
KINDS = st.sampled_from(sorted(LITERALS))


class Slot:
    """A literal's place in a template; ``kept``: one normalize leaves as written."""

    def __init__(self, kept: bool = False) -> None:
        self.kept = kept


Part = Union[str, Slot]


@st.composite
def expressions(draw: Callable[..., Any]) -> list[Part]:
    name = draw(NAME)
    form = draw(st.integers(0, 7))
    if form == 0:
        return [name]
    if form == 1:
        return [Slot()]
    if form == 2:
        return [name, draw(WS), draw(st.sampled_from(["+", "-", "*", "<", "||"])), " ", Slot()]
    if form == 3:
        function = draw(st.sampled_from(["lower", "abs", "nextval", "now", "f1"]))
        return [function, "(", Slot(), ")"]
    if form == 4:
        return [Slot(), "::", draw(st.sampled_from(["int", "text", "numeric", "int8"]))]
    if form == 5:
        return ["CAST(", Slot(), " AS ", draw(st.sampled_from(["int", "text", "date"])), ")"]
    if form == 6:  # type modifiers and array bounds: normalize keeps these constants
        opening, closing = draw(st.sampled_from([("char(", ")"), ("varchar(", ")"), ("int[", "]")]))
        return [name, "::", opening, Slot(True), closing]
    return ["(", name, draw(WS), "=", draw(WS), Slot(), ")"]


@st.composite
def statements(draw: Callable[..., Any]) -> list[Part]:
    ws = lambda: draw(WS)  # noqa: E731
    table = draw(NAME)
    column = draw(NAME)
    where: list[Part] = ["WHERE", " ", column, ws(), "=", ws(), Slot()]
    kind = draw(st.integers(0, 3))
    if kind == 0:
        columns: list[Part] = []
        for i, expression in enumerate(draw(st.lists(expressions(), min_size=1, max_size=3))):
            columns += ([",", ws()] if i else []) + expression
        parts: list[Part] = ["SELECT", " ", *columns]
        if draw(st.booleans()):
            parts += [" ", "FROM", " ", table, " ", *where]
            tail = draw(st.sampled_from(["", "lock", "limit", "order", "in"]))
            if tail == "lock":
                parts += [" ", draw(st.sampled_from(["FOR UPDATE", "FOR SHARE", "for update"]))]
            elif tail == "limit":
                parts += [" LIMIT ", Slot(), " OFFSET ", Slot()]
            elif tail == "order":  # ORDER BY 1 is a column number: normalize keeps it
                parts += [" ORDER BY ", Slot(True)]
            elif tail == "in":
                parts += [" AND ", column, " IN (", Slot(), ",", ws(), Slot(), ")"]
    elif kind == 1:
        count = draw(st.integers(1, 3))
        names: list[Part] = []
        values: list[Part] = []
        for i in range(count):
            names += ([",", ws()] if i else []) + [draw(NAME)]
            values += ([",", ws()] if i else []) + draw(expressions())
        parts = ["INSERT INTO", " ", table, " (", *names, ")", ws(), "VALUES", " (", *values, ")"]
    elif kind == 2:
        parts = ["UPDATE", " ", table, " SET ", column, ws(), "=", ws(), column, " + ", Slot()]
        parts += [" ", *where]
    else:
        parts = ["DELETE FROM", " ", table, " ", *where]
    return parts


@st.composite
def pairs(draw: Callable[..., Any]) -> tuple[str, str, bool]:
    """Two renderings of one template, and whether normalize replaces all their literals."""
    template = draw(statements())
    if draw(st.booleans()):
        template += [";", draw(WS), *draw(statements())]
    if draw(st.booleans()):
        template += [draw(st.sampled_from([";", " ;", ";\n"]))]
    texts = ["", ""]
    for part in template:
        if isinstance(part, str):
            texts[0] += part
            texts[1] += part
            continue
        first = draw(KINDS)
        second = first if draw(st.integers(0, 9)) else draw(KINDS)
        texts[0] += draw(LITERALS[first])
        texts[1] += draw(LITERALS[second])
    normalized = not any(isinstance(part, Slot) and part.kept for part in template)
    return texts[0], texts[1], normalized


_CONSTANTS = frozenset({"ICONST", "FCONST", "SCONST"})


def tokens(text: str) -> Union[str, list[tuple[str, str]]]:
    """PostgreSQL's tokens of a text, constants without their values; or its error."""
    try:
        scanned = pglast.parser.scan(text)
    except Exception as error:
        return type(error).__name__
    return [(t.name, "" if t.name in _CONSTANTS else text[t.start : t.end + 1]) for t in scanned]


def normalized(text: str) -> str:
    try:
        return "ok " + pglast.parser.normalize(text)
    except Exception as error:
        return f"error {type(error).__name__}"


def verdict(text: str) -> Verdict:
    # A new Classifier each time: a shared one would answer the second text from
    # its normalize-keyed cache.
    return Classifier(known_read_only=frozenset({"lower", "abs", "now"})).classify(text)


class SoundnessTests(SynchronousTestCase):
    """Equal keys mean one shape, by PostgreSQL's own scanner and parser."""

    skip = SKIP or None

    @settings(max_examples=250, deadline=None)
    @given(pairs())
    def test_equal_keys_mean_one_shape(self, pair: tuple[str, str, bool]) -> None:
        """Texts with one key scan alike, normalize alike and get the same verdict."""
        first, second, replaced = pair
        first_key = key(first.encode())
        if first_key is None or first_key != key(second.encode()):
            return
        self.assertEqual(tokens(first), tokens(second))
        if replaced:
            self.assertEqual(normalized(first), normalized(second))
        else:  # normalize keeps a type modifier's or ORDER BY's number; both parse or neither
            self.assertEqual(normalized(first)[:2], normalized(second)[:2])
        self.assertEqual(verdict(first), verdict(second))

    @settings(max_examples=150, deadline=None)
    @given(pairs())
    def test_templates_have_keys(self, pair: tuple[str, str, bool]) -> None:
        """The templates hold nothing the rules refuse: the key is not needlessly absent."""
        self.assertIsNotNone(key(pair[0].encode()), pair[0])

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_any_bytes(self, data: bytes) -> None:
        """Any bytes: None or a key no longer than the input, never an exception."""
        result = key(data)
        if result is not None:
            self.assertIsInstance(result, bytes)
            self.assertLessEqual(len(result), len(data))

    @settings(max_examples=300)
    @given(st.binary(max_size=200), st.binary(max_size=200))
    def test_key_and_input_prefix(self, head: bytes, tail: bytes) -> None:
        """A key never reads past its input: a prefix's key ignores what follows in memory."""
        whole = head + tail
        self.assertEqual(key(memoryview(whole)[: len(head)]), key(head))

    @settings(max_examples=300)
    @given(st.text(max_size=200))
    def test_any_text(self, text: str) -> None:
        """Any text encoded as UTF-8 is answered without an exception."""
        key(text.encode("utf-8"))

    @settings(max_examples=200)
    @given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60))
    def test_printable_ascii(self, text: str) -> None:
        """Printable ASCII (the common case): a key keeps every byte that is not a literal."""
        result = key(text.encode())
        if result is not None:
            stripped = result.replace(b"\x01", b"").replace(b"\x02", b"").replace(b"\x03", b"")
            self.assertLessEqual(len(result), len(text))
            self.assertTrue(set(stripped) <= set(text.encode()))
