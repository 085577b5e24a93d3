"""Development helpers that ship beside the pooler but are not part of it.

``devdb.py`` starts and removes a throwaway PostgreSQL (tests, benchmark,
demo); ``demo.py`` is ``pgpool-tw-demo`` (``scripts/run``).  The runtime package
``pgpool_tw`` must never import this one; nothing here may signal a process it
did not start, and the throwaway PostgreSQL listens on loopback only.
"""
