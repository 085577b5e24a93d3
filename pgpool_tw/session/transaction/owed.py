"""What a transaction-mode stream's parts share: message types, what the server owes for
each message sent (the ``_expect`` kinds), and the pooler's own small answers.

Private to this package (its names keep their underscores); no logic.
"""

from __future__ import annotations

from struct import Struct
from typing import Optional

from pgpool_tw.protocol import messages as m

_LENGTH = Struct("!I").unpack_from
_MAX_MESSAGE = 0x3FFFFFFF

IDLE = m.IDLE
_FAILED = m.IN_FAILED_TRANSACTION

# Client message types.
_QUERY, _PARSE, _BIND, _DESCRIBE, _EXECUTE = b"QPBDE"
_CLOSE, _FLUSH, _SYNC, _FUNCTION_CALL, _TERMINATE = b"CHSFX"
# Server message types.
_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE = b"123"
_ROW_DESCRIPTION, _NO_DATA, _COMMAND_COMPLETE, _EMPTY_QUERY, _SUSPENDED = b"TnCIs"
_READY, _PARAMETER_STATUS, _ERROR = b"ZSE"

#: What the server owes for each message sent, in order (``_expect`` entries' kinds).
#: The first eight are the client's; HIDDEN ones are the pooler's own (their answers
#: never reach the client); FAKE ones were never sent: the pooler answers in their place.
(
    _E_PARSE,
    _E_BIND,
    _E_DESCRIBE,
    _E_EXECUTE,
    _E_CLOSE,
    _E_SYNC,
    _E_QUERY,
    _E_FUNCTION,
    _E_HIDDEN_PARSE,
    _E_HIDDEN_CLOSE,
    _E_HIDDEN_QUERY,
    _E_FAKE,
) = range(12)
_EXTENDED = frozenset((_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE))
_UNIT_ENDS = frozenset((_E_SYNC, _E_QUERY, _E_FUNCTION, _E_HIDDEN_QUERY))
_SIMPLE = frozenset((_E_QUERY, _E_FUNCTION, _E_HIDDEN_QUERY))


def _split_parse(msg: bytes) -> tuple[bytes, bytes]:
    """A Parse message's statement name, and its body after the name (query text,
    parameter types): what the pooler keeps per named statement."""
    name_end = msg.index(b"\0", 5)
    return msg[5:name_end], msg[name_end + 1 :]


def _text_of(content: bytes) -> str:
    """The query text of a Parse body after its name."""
    return m.decode(content[: content.index(b"\0")])


_PARSE_COMPLETE_MSG = b"1\x00\x00\x00\x04"
_SYNC_MESSAGE = b"S\x00\x00\x00\x04"
_CLOSE_COMPLETE_MSG = b"3\x00\x00\x00\x04"
_DEALLOCATE_DONE = m.message(b"C", b"DEALLOCATE\x00")


#: Server messages read one by one (``TransactionStream._message``): what settles
#: something owed (``_settle``), and the two whose bodies are read.
_NOT_PLAIN = frozenset(
    (
        _READY,
        _PARAMETER_STATUS,
        _ERROR,
        _PARSE_COMPLETE,
        _BIND_COMPLETE,
        _CLOSE_COMPLETE,
        _ROW_DESCRIPTION,
        _NO_DATA,
        _COMMAND_COMPLETE,
        _EMPTY_QUERY,
        _SUSPENDED,
    )
)

#: Per what the server owes first (an ``_expect`` kind, or ``_OWED_NOTHING``): the server
#: messages read one by one, or None when every message is (a hidden statement's answer,
#: dropped; a fake's turn).  Inside a simple Query or a FunctionCall only ReadyForQuery,
#: ParameterStatus and ErrorResponse matter: its RowDescription and CommandComplete settle
#: nothing, so they go out with the DataRows around them.
_OWED_NOTHING = _E_FAKE + 1
_ONE_BY_ONE: tuple[Optional[frozenset[int]], ...] = tuple(
    frozenset((_READY, _PARAMETER_STATUS, _ERROR))
    if owed in (_E_QUERY, _E_FUNCTION)
    else None
    if _E_HIDDEN_PARSE <= owed <= _E_FAKE
    else frozenset((_READY, _PARAMETER_STATUS))
    if owed == _OWED_NOTHING
    else _NOT_PLAIN
    for owed in range(_OWED_NOTHING + 1)
)
