"""What outside code may watch: events once per session or server connection.

``events.py`` fans ``IPoolEvents`` out to observers an embedding application
adds.  This room must never be called per message, slow the relay, or let an
observer's exception stop the pooler.
"""
