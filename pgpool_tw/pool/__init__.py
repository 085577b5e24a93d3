"""Server connections: opening them, logging them in, and deciding their reuse.

``pool.py`` is the only judge of whether a server connection may serve another
client (reset, park, life times, limits) and admits client sessions to the
``num_init_children`` slots; ``backend.py`` is one server connection;
``connector.py`` opens connections and delivers CancelRequests.  This room must
never read client bytes or write to a client except through the owner's
callbacks (``backend.ServerOwner``).
"""
