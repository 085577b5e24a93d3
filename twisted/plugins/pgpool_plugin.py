"""The dropin that makes ``twistd pgpool`` exist; everything else loads lazily."""

from twisted.application.service import ServiceMaker

pgpool = ServiceMaker(
    "pgpool-tw",
    "pgpool_tw.tap",
    "PostgreSQL connection pooler (pgpool-II configuration)",
    "pgpool",
)
