"""One client connection's life, from its first byte to its close.

``login.py`` reads the startup packet, answers SSLRequest and GSSENCRequest,
serves a CancelRequest, authenticates the client (``clientauth.py``) and gets it
a server connection; ``frontend.py`` attaches it, relays and gives the server
back; ``cancel.py`` owns the pooler's own cancel keys.  This room must never
decide whether a server connection may serve another client (``pool/`` does),
read pgpool.conf text, or parse a message body on the relay.
"""
