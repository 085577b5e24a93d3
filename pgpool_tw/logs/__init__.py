"""What the process's log looks like: JSON lines (``jsonlog``) and the one escape of
client-supplied text (``escape``).  What is logged, and when, is decided where it happens
(``session/logs.py`` for a session's statements and its end)."""
