"""Tests for pgpool_tw.protocol.sql: literals and identifiers the pooler quotes itself."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.protocol.sql import quote_ident, quote_literal

TEXT = st.text(alphabet=st.characters(exclude_characters="\0", exclude_categories=("Cs",)))


def unquote_literal(literal: str) -> str:
    """What PostgreSQL reads from a literal quote_literal may produce.

    In the plain form only doubled quotes are special (and no backslash may appear,
    so the meaning is the same whatever standard_conforming_strings is); in the
    ``E''`` form a backslash escapes the next character.
    """
    escaped = literal.startswith("E'")
    if not escaped:
        assert literal.startswith("'") and "\\" not in literal, literal
    text = literal[2:] if escaped else literal[1:]
    out = []
    i = 0
    while True:
        ch = text[i]
        if escaped and ch == "\\":
            out.append(text[i + 1])
            i += 2
        elif ch == "'":
            if text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
            else:
                assert i == len(text) - 1, f"literal ends early: {literal!r}"
                return "".join(out)
        else:
            out.append(ch)
            i += 1


def unquote_ident(ident: str) -> str:
    """What PostgreSQL reads from a quoted identifier quote_ident may produce."""
    assert ident.startswith('"') and ident.endswith('"') and len(ident) >= 2, ident
    inner = ident[1:-1]
    assert inner.replace('""', "").count('"') == 0, ident
    return inner.replace('""', '"')


class QuoteLiteralTests(SynchronousTestCase):
    def test_plain(self) -> None:
        """Text without quotes or backslashes is just wrapped in single quotes."""
        self.assertEqual(quote_literal("hello world"), "'hello world'")

    def test_empty(self) -> None:
        """The empty string is two single quotes."""
        self.assertEqual(quote_literal(""), "''")

    def test_quotes_doubled(self) -> None:
        """Single quotes are doubled."""
        self.assertEqual(quote_literal("it's"), "'it''s'")
        self.assertEqual(quote_literal("''"), "''''''")

    def test_backslash_uses_e_form(self) -> None:
        """A backslash switches to the E'' form with backslashes doubled."""
        self.assertEqual(quote_literal("a\\b"), "E'a\\\\b'")
        self.assertEqual(quote_literal("\\"), "E'\\\\'")

    def test_backslash_and_quote(self) -> None:
        """With both, quotes and backslashes are doubled in the E'' form."""
        self.assertEqual(quote_literal("it's \\n"), "E'it''s \\\\n'")
        self.assertEqual(quote_literal("\\'"), "E'\\\\'''")

    def test_double_quotes_untouched(self) -> None:
        """Double quotes have no meaning inside a literal and are left alone."""
        self.assertEqual(quote_literal('say "hi"'), "'say \"hi\"'")

    def test_nul_refused(self) -> None:
        """A NUL character cannot be quoted into a literal."""
        self.assertRaises(ValueError, quote_literal, "a\0b")

    @given(TEXT)
    def test_round_trip(self, value: str) -> None:
        """Any text without NUL reads back as itself from its literal."""
        self.assertEqual(unquote_literal(quote_literal(value)), value)


class QuoteIdentTests(SynchronousTestCase):
    def test_plain(self) -> None:
        """An identifier is wrapped in double quotes, keeping its case."""
        self.assertEqual(quote_ident("MyTable"), '"MyTable"')

    def test_double_quotes_doubled(self) -> None:
        """Double quotes inside an identifier are doubled."""
        self.assertEqual(quote_ident('a"b'), '"a""b"')
        self.assertEqual(quote_ident('"'), '""""')

    def test_single_quotes_and_backslashes_untouched(self) -> None:
        """Single quotes and backslashes have no meaning in an identifier."""
        self.assertEqual(quote_ident("it's\\"), '"it\'s\\"')

    def test_nul_refused(self) -> None:
        """A NUL character cannot be quoted into an identifier."""
        self.assertRaises(ValueError, quote_ident, "a\0")

    @given(TEXT)
    def test_round_trip(self, name: str) -> None:
        """Any name without NUL reads back as itself from its quoted form."""
        self.assertEqual(unquote_ident(quote_ident(name)), name)
