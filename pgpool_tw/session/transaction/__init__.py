"""Transaction pooling's client stream (``stream.TransactionStream``) and its parts:
``statements.py`` (protocol-level named statements), ``answers.py`` (the server's
answers in order), ``effects.py`` (what statements leave on a server session),
``sql_prepared.py`` (SQL PREPARE/EXECUTE/DEALLOCATE), ``owed.py`` (what they share).
"""

from pgpool_tw.session.transaction.statements import NAMED_STATEMENT, StatementNames
from pgpool_tw.session.transaction.stream import TransactionStream, TxOwner

__all__ = ["NAMED_STATEMENT", "StatementNames", "TransactionStream", "TxOwner"]
