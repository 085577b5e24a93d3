"""pgpool-tw: a PostgreSQL connection pooler and proxy on Twisted."""

__version__ = "0.1.0"
