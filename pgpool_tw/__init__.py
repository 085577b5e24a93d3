"""pgpool-tw: a PostgreSQL connection pooler and proxy on Twisted."""

#: The one place the version is written: setup.py and ``twistd pgpool --version`` read it.
__version__ = "0.1.0"
