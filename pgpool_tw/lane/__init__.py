"""Warm logins: what Python lets the C loop's lane do for repeat clients, and takes back.

``warm.py`` (``WarmLane``: learn entries, lend parked servers, handle the lane's
events, promote a session to Python), ``handdown.py`` (the data handed to the
lane: entries, a warm relay's fields, cancel-key bytes) and ``watch.py`` (what
observers and the stats snapshot see of warm sessions).  This room sits above
the session and the pool, whose rules it applies: nothing imports it but
``service.py`` and ``admin/``; sessions and the pool reach it through their
``WarmLogins`` and ``Lender`` protocols.  It must never hold a rule of its own
that the session or the pool already holds.
"""
