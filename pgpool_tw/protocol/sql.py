"""Quoting values into SQL the pooler sends itself; nothing is ever pasted in."""

from __future__ import annotations


def quote_literal(value: str) -> str:
    """A string literal that means ``value`` whatever standard_conforming_strings is.

    Like libpq's PQescapeLiteral: quotes are doubled, and when a backslash is
    present the ``E''`` form is used with backslashes doubled too.
    """
    if "\0" in value:
        raise ValueError("a SQL literal cannot contain a NUL character")
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def set_application_name(name: str) -> str:
    """The statement that gives a server session a client's application_name (a pooled
    or borrowed server keeps the name of the client it served before)."""
    return f"SET application_name TO {quote_literal(name)}"


def quote_ident(name: str) -> str:
    """An identifier that means exactly ``name``: double quotes, inner ones doubled."""
    if "\0" in name:
        raise ValueError("a SQL identifier cannot contain a NUL character")
    return '"' + name.replace('"', '""') + '"'
