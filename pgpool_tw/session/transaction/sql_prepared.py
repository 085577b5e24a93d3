"""SQL-level prepared statements (``PREPARE`` / ``EXECUTE`` / ``DEALLOCATE``) of a
transaction-mode client, carried across the servers it borrows.

Why not renamed like protocol-level statements: an SQL prepared statement lives in the
server's namespace under the client's own name, and ``EXECUTE name`` names it in the
query text, which the pooler does not rewrite.  So the name stays the client's, and the
pooler tracks which ``PREPARE`` text each name has, for each client (``SqlStatements``)
and for each server (``BackendProtocol.sql_prepared``).  The rule:

* Before a statement that uses a name reaches a server (``sync``), the server is made to
  hold what the client holds under it, by hidden statements whose answers the client
  never sees: ``DEALLOCATE name`` when the server has another text under it (another
  client's), then the client's own ``PREPARE`` text when the client has one.  So an
  ``EXECUTE`` runs the client's statement, a ``PREPARE`` of a name the client lacks does
  not fail for another client's, and one of a name it has fails as PostgreSQL would.
* A client's ``PREPARE`` and ``DEALLOCATE`` are recorded, for it and its server, once
  the server answered them without an error (``done``); ``DEALLOCATE ALL`` and
  ``DISCARD ALL`` empty both (``clear``).
* A hidden statement that fails left the server as it was (PREPARE and DEALLOCATE either
  happen whole or not at all; in a failed transaction block nothing happens): ``undo``.
  A hidden ``PREPARE`` that fails on its new server makes the client's ``EXECUTE`` fail
  there as PostgreSQL says ("prepared statement does not exist").
* Bound: a client holds what it prepared (as a direct connection would); a server keeps
  what departed or absent clients prepared there, for the next client with the same
  text, but past ``KEPT`` names the oldest a client does not hold are deallocated when a
  client arrives (``trim``), or clients that each prepare names of their own would grow
  every server without end.  ``max_prepared_statements`` is about protocol-level
  statements and does not bound these.

Not exact: SQL and protocol-level names are kept apart (protocol ones are renamed), so a
client that uses one name for both is not told "already exists" as a direct connection
would be.  Hidden statements go only before a simple Query or the first extended-protocol
message since a Sync (the stream's rule), and at a lease's first such message all the
client's own statements are put on the server; so in the middle of a pipeline a name the
client does not hold may still hold another client's statement on that server (an
EXECUTE of it runs, a PREPARE of it fails "already exists"): a program that EXECUTEs what
it never prepared is wrong anyway.

Pure bookkeeping: the stream (``session/transaction/stream.py``) decides when hidden statements
may be sent and sends them.
"""

from __future__ import annotations

from typing import Optional

from pgpool_tw.cluster.session_state import DEALLOCATE, EXECUTE, PREPARE, state_effect
from pgpool_tw.protocol.sql import quote_ident

__all__ = ["KEPT", "Hidden", "SqlStatements"]

#: Names a server keeps past those of the client on it (see the module doc).
KEPT = 100

#: A hidden statement: its text, the name, and what the server holds under that name
#: before and after it (None: nothing).
Hidden = tuple[str, str, Optional[str], Optional[str]]
#: What a text does with SQL prepared statements (``StateEffect.sql``).
Uses = tuple[tuple[str, str, str], ...]


class SqlStatements:
    """One client's SQL prepared statements: name -> its PREPARE statement's text."""

    __slots__ = ("texts",)

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def sync(self, server: dict[str, str], name: str) -> list[Hidden]:
        """What makes ``server`` hold the client's statement ``name`` (or none)."""
        mine = self.texts.get(name)
        theirs = server.get(name)
        if mine == theirs:
            if theirs is not None:
                del server[name]  # most recently used last (``trim``)
                server[name] = theirs
            return []
        hidden: list[Hidden] = []
        if theirs is not None:
            del server[name]
            hidden.append((f"DEALLOCATE {quote_ident(name)}", name, theirs, None))
        if mine is not None:
            server[name] = mine
            hidden.append((mine, name, None, mine))
        return hidden

    def sync_uses(self, server: dict[str, str], uses: Uses) -> list[Hidden]:
        """Every name a text uses made the client's on ``server``."""
        hidden: list[Hidden] = []
        for _, name, _ in uses:
            if name:
                hidden += self.sync(server, name)
        return hidden

    def sync_all(self, server: dict[str, str]) -> list[Hidden]:
        """Every statement of the client onto ``server`` (before a pipeline may use any)."""
        hidden: list[Hidden] = []
        for name in list(self.texts):
            hidden += self.sync(server, name)
        return hidden

    def trim(self, server: dict[str, str]) -> list[Hidden]:
        """Deallocate the oldest names the client does not hold, past ``KEPT`` of them."""
        hidden: list[Hidden] = []
        if len(server) <= KEPT:
            return hidden
        others = [name for name in server if name not in self.texts]
        extra = len(others) - KEPT
        for name in others[: max(extra, 0)]:
            text = server.pop(name)
            hidden.append((f"DEALLOCATE {quote_ident(name)}", name, text, None))
        return hidden

    def answer(self, server: dict[str, str], uses: Uses) -> bytes:
        """The command tag of a PREPARE or DEALLOCATE alone that needs no server, after
        recording it; b"" when the server must run it.

        * ``DEALLOCATE`` of a statement of the client's that the server does not hold as
          the client's: forgotten (it need not be prepared here to be deallocated);
        * ``PREPARE`` of a name the client lacks, whose very text the server holds
          (clients that all prepare the same statements): recorded.
        """
        verb, name, text = uses[0]
        mine = self.texts.get(name)
        if not name or len(uses) != 1:
            return b""
        if verb == DEALLOCATE and mine is not None and server.get(name) != mine:
            del self.texts[name]
            return b"DEALLOCATE"
        if verb == PREPARE and mine is None and server.get(name) == text:
            self.done(server, uses)
            return b"PREPARE"
        return b""

    def runs(self, uses: Uses) -> frozenset[str]:
        """The pins of the statements a text EXECUTEs (an advisory lock...)."""
        pins: frozenset[str] = frozenset()
        for verb, name, _ in uses:
            text = self.texts.get(name) if verb == EXECUTE else None
            if text is not None:
                pins |= state_effect(text).runs
        return pins

    @staticmethod
    def undo(server: dict[str, str], hidden: Hidden) -> None:
        """A hidden statement failed: the server holds what it held before it (unless
        what the pooler believes of the name changed since)."""
        _, name, before, after = hidden
        if server.get(name) != after:
            return
        if before is None:
            server.pop(name, None)
        else:
            server[name] = before

    def done(self, server: dict[str, str], uses: Uses) -> None:
        """The client's statements ran without an error: record what they changed."""
        for verb, name, text in uses:
            if verb == PREPARE:
                self.texts[name] = text
                server.pop(name, None)
                server[name] = text
            elif verb == DEALLOCATE and name:
                self.texts.pop(name, None)
                server.pop(name, None)
            elif verb == DEALLOCATE:
                self.clear(server)  # DEALLOCATE ALL, DISCARD ALL

    def clear(self, server: Optional[dict[str, str]]) -> None:
        """DEALLOCATE ALL / DISCARD ALL: none left, for the client or on its server."""
        self.texts.clear()
        if server is not None:
            server.clear()
