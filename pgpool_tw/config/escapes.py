"""pgpool-II's % escapes in failover_command, failback_command and follow_primary_command.

pgpool-II (``trigger_failover_command`` in ``src/main/pgpool_main.c``, 4.1 to 4.7) pastes
the values into the command line as they are and hands it to ``system()``, so a host name
or data directory holding a quote, ``$`` or ``;`` runs as shell.  Here every value is
quoted for the place in the line where it lands, so it reaches the program as exactly its
text, while the shell syntax the user wrote (pipes, redirections, their own quotes) keeps
its meaning.  That needs sh's quoting state at each escape: this module reads the template
as sh would (quotes, backslashes, comments, ``$(``, ``${``, backquotes, here-documents),
quotes a value where that state is certain, and refuses (``EscapeError``) an escape where
it is not, since a guess there could let a value run as shell.

The escapes are pgpool-II's, and only they (4.7 has no others for these commands):

======  ================================================  when missing (pgpool-II)
``%d``  the node the command is about                     --
``%h``  its host name                                     --
``%p``  its port                                          --
``%D``  its data directory                                --
``%m``  the new main node's id                            ``-1``
``%H``  the new main node's host name                     empty argument
``%r``  the new main node's port                          empty argument
``%R``  the new main node's data directory                empty argument
``%M``  the old main node's id                            (``-1``)
``%P``  the old primary's id                              ``-1``
``%N``  the old primary's host name                       empty argument
``%S``  the old primary's port                            empty argument
``%%``  one ``%``
======  ================================================  ========================

pgpool-II writes ``""`` for a missing host, port or directory: outside quotes the shell
reads it as an empty argument, which is what ``''`` gives here in every quoting context.
An unknown escape (``%x``) and a lone ``%`` at the end are dropped, both characters, as
pgpool-II drops them; ``unknown_escapes`` lists them so a caller can warn once.  Where
pgpool-II differs on purpose: it writes ``%d``, ``%p`` and ``%m`` with a leading space
(``--node=%d`` gives ``--node= 1``); here a value is only its text.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ESCAPES", "CommandValues", "EscapeError", "check", "expand", "unknown_escapes"]

#: The letters that follow ``%`` (``%%`` aside), in pgpool-II's documentation order.
ESCAPES = "dhpDmHMPrRNS"


class EscapeError(ValueError):
    """A value cannot be placed safely where the template puts its escape."""


@dataclass(frozen=True)
class CommandValues:
    """What one run of a command is about; ``-1`` / ``""`` / ``None`` where pgpool-II has
    no node (no new main node, no old primary), as in the module's table."""

    node_id: int  # %d  the node the command is about
    host: str  # %h
    port: int  # %p
    data_directory: str  # %D
    new_main_id: int  # %m  (-1: none)
    new_main_host: str  # %H
    new_main_port: Optional[int]  # %r
    new_main_data_directory: str  # %R
    old_main_id: int  # %M
    old_primary_id: int  # %P  (-1: none)
    old_primary_host: str  # %N
    old_primary_port: Optional[int]  # %S


def _port(port: Optional[int]) -> str:
    return "" if port is None else str(port)


def _texts(values: CommandValues) -> dict[str, str]:
    return {
        "d": str(values.node_id),
        "h": values.host,
        "p": str(values.port),
        "D": values.data_directory,
        "m": str(values.new_main_id),
        "H": values.new_main_host,
        "r": _port(values.new_main_port),
        "R": values.new_main_data_directory,
        "M": str(values.old_main_id),
        "P": str(values.old_primary_id),
        "N": values.old_primary_host,
        "S": _port(values.old_primary_port),
    }


def _quoted(text: str) -> str:
    """Always single quotes, unlike shlex.quote: a bare ``1`` before ``>&2`` would be read
    as a file descriptor, and a bare ``if`` as a reserved word."""
    return "'" + text.replace("'", "'\\''") + "'"


# sh's contexts: a command (the line itself, or inside $( )), single quotes, double
# quotes, ${ } and backquotes.
_CMD, _SQ, _DQ, _PARAM, _BACKQ = range(5)
# Characters after which, unquoted, a new token starts (so a ``#`` there is a comment).
_BREAKS = frozenset(" \t\n;&|()<>")


class _Reader:
    """sh's quoting state after each character of the template, read as sh reads it."""

    __slots__ = (
        "comment",
        "dollar",
        "escaped",
        "frames",
        "heredoc",
        "open",
        "prev",
        "unsure",
        "word",
        "word_start",
    )

    def __init__(self) -> None:
        self.frames = [_CMD]
        self.open = [0]  # per frame: "(" not yet closed, so ")" ends a $( ) only at 0
        self.escaped = False  # the last character was a backslash that quotes the next
        self.dollar = False  # the last character was an active $
        self.prev = ""  # the last unquoted character of a command (to see "<<")
        self.word = ""  # the word being read in a command (to see "case")
        self.heredoc = False  # "<<" seen: the lines after this one may be a here-document
        self.unsure: Optional[str] = None  # why later escapes cannot be placed safely
        self.comment = False  # inside a "#" comment of a command
        self.word_start = True  # a "#" here would start a comment

    def _push(self, frame: int) -> None:
        self.frames.append(frame)
        self.open.append(0)
        self.prev = ""
        self.word = ""

    def _pop(self) -> None:
        self.frames.pop()
        self.open.pop()
        self.prev = ""
        self.word = ""
        self.word_start = False

    def _end_word(self) -> None:
        # A ")" of a case pattern inside $( ) would end it early for this reader.
        if self.word == "case" and len(self.frames) > 1:
            self.unsure = "a case statement inside $( )"
        self.word = ""

    def feed(self, char: str) -> None:
        frame = self.frames[-1]
        dollar, self.dollar = self.dollar, False
        if frame == _SQ:
            if char == "'":
                self._pop()
            return
        if self.escaped:
            self.escaped = False
            if frame == _CMD and char != "\n":  # backslash-newline vanishes before parsing
                self.word_start = False
                self.word += char
                self.prev = ""
            return
        if dollar and char in "({":
            self._push(_CMD if char == "(" else _PARAM)
            self.word_start = True
            return
        if frame == _CMD:
            self._command(char)
        elif frame == _DQ:
            self._double(char)
        elif frame == _PARAM:
            self._param(char)
        else:
            self._backquote(char)

    def _command(self, char: str) -> None:
        if self.comment:
            if char == "\n":
                self.comment = False
                self._newline()
            return
        if char == "#" and self.word_start:
            self.comment = True
            return
        if char in _BREAKS:
            self._end_word()
            if char == "\n":
                self._newline()
            elif char == "(":
                self.open[-1] += 1
            elif char == ")":
                if self.open[-1] == 0 and len(self.frames) > 1:
                    self._pop()
                    return
                self.open[-1] = max(0, self.open[-1] - 1)
            elif char == "<" and self.prev == "<":
                self.heredoc = True
            self.word_start = True
            self.prev = char
            return
        self.word_start = False
        self.prev = char
        if char == "\\":
            self.escaped = True
        elif char == "'":
            self._push(_SQ)
        elif char == '"':
            self._push(_DQ)
        elif char == "`":
            self._push(_BACKQ)
        elif char == "$":
            self.dollar = True
        else:
            self.word += char

    def _newline(self) -> None:
        if self.heredoc:
            self.unsure = "a here-document"
        self.word_start = True

    def _double(self, char: str) -> None:
        if char == "\\":
            self.escaped = True
        elif char == '"':
            self._pop()
        elif char == "$":
            self.dollar = True
        elif char == "`":
            self._push(_BACKQ)

    def _param(self, char: str) -> None:
        if char == "\\":
            self.escaped = True
        elif char == "}":
            self._pop()
        elif char == "'":
            if self.frames[-2] == _DQ:  # dash and bash disagree on these quotes
                self.unsure = 'a single quote inside "${ }"'
            else:
                self._push(_SQ)
        elif char == '"':
            self._push(_DQ)
        elif char == "$":
            self.dollar = True
        elif char == "`":
            self._push(_BACKQ)

    def _backquote(self, char: str) -> None:
        if char == "\\":
            self.escaped = True
        elif char == "`":
            self._pop()
        elif char in "'\"":  # shells disagree on where such a backquote ends
            self.unsure = "quotes inside backquotes"

    def place(self, escape: str, at: int, text: str) -> str:
        """The text that puts ``text`` here as one exact piece of a word."""
        where = f"%{escape} at offset {at}"
        if "\0" in text:
            raise EscapeError(f"{where}: the value holds a NUL byte")
        if self.unsure is not None:
            raise EscapeError(f"{where} comes after {self.unsure}; cannot quote it safely")
        frames = self.frames
        if not (len(frames) == 1 or len(frames) == 2 and frames[1] in (_SQ, _DQ)):
            raise EscapeError(
                f"{where} is inside $( ), ${{ }} or backquotes; cannot quote it safely"
            )
        frame = frames[-1]
        if frame == _SQ:
            return "'" + _quoted(text) + "'"
        # A backslash just before the value would quote its first character; a newline
        # after it makes the pair a line continuation, which sh deletes.
        lead = "\n" if self.escaped else ""
        self.escaped = False
        if frame == _DQ:
            self.dollar = False
            return lead + '"' + _quoted(text) + '"'
        if self.comment:
            return ""  # a comment's text never reaches a program
        if self.dollar:
            raise EscapeError(f"{where} follows a bare $ ($'...' is a quote of its own)")
        self.word_start = False
        self.prev = ""
        return lead + _quoted(text)


def _walk(template: str, texts: dict[str, str]) -> str:
    reader = _Reader()
    out: list[str] = []
    at = 0
    end = len(template)
    while at < end:
        char = template[at]
        if char != "%":
            reader.feed(char)
            out.append(char)
            at += 1
            continue
        letter = template[at + 1 : at + 2]
        if letter == "%":
            reader.feed("%")
            out.append("%")
        elif letter and letter in texts:
            out.append(reader.place(letter, at, texts[letter]))
        at += 2  # an unknown escape, or a lone % at the end, is dropped like pgpool-II
    return "".join(out)


def expand(template: str, values: CommandValues) -> str:
    """The command line for ``/bin/sh -c``, each escape replaced by its value, quoted so
    the program gets exactly that text; raises EscapeError where that cannot be certain
    (an escape inside ``$( )``, ``${ }``, backquotes, after a here-document, or right
    after a bare ``$``), never guessing."""
    return _walk(template, _texts(values))


def check(template: str) -> None:
    """Raise EscapeError now if ``expand`` would refuse this template (whatever the values
    but a NUL), so a setting can be refused when the configuration is read, not at
    failover."""
    _walk(template, dict.fromkeys(ESCAPES, ""))


def unknown_escapes(template: str) -> list[str]:
    """The escapes pgpool-II would drop silently (``%x``, a ``%`` at the end), in order."""
    found: list[str] = []
    at = 0
    while True:
        at = template.find("%", at)
        if at < 0:
            return found
        letter = template[at + 1 : at + 2]
        if letter == "" or letter not in ESCAPES + "%":
            found.append("%" + letter)
        at += 2
