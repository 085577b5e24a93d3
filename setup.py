"""Packaging for pgpool-tw.

``twisted.plugins`` is listed as a package (it has no ``__init__.py``: a dropin
directory must never be a package) so that a regular install copies the dropin
into Twisted's own plugin directory.
"""

import platform
import re
import sys
from pathlib import Path

from setuptools import Extension, setup

# ``package_dir={"": "."}`` makes an editable install put this checkout on
# sys.path (a static .pth) instead of an import hook, so Twisted's plugin scan,
# which looks for ``twisted/plugins`` under each sys.path entry, finds the dropin.

# The relay's hot path and warm logins in C (pgpool_tw/engine/_speedups.c, _tracker.c,
# _lane.c, _warm.c) for CPython on Linux; optional:
# without a compiler the pure-Python relay runs.  PyPy keeps the Python relay,
# which its JIT compiles (its C-API emulation would make the extension slower).
#: The runtime package's sub-packages, one room each (docs/ARCHITECTURE.md).
ROOMS = (
    "protocol",
    "config",
    "cluster",
    "net",
    "engine",
    "pool",
    "checks",
    "session",
    "lane",
    "stats",
    "admin",
)

#: One version, read from the package so ``twistd pgpool --version`` and pip agree.
VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    Path(__file__).with_name("pgpool_tw").joinpath("__init__.py").read_text(encoding="utf-8"),
    re.MULTILINE,
).group(1)

SPEEDUPS = [
    Extension(
        "pgpool_tw.engine._speedups",
        [
            f"pgpool_tw/engine/{name}.c"
            for name in (
                "_speedups",
                "_relay",
                "_slots",
                "_tracker",
                "_tracker_type",
                "_lane",
                "_login",
                "_warm",
                "_reset",
                "_writer",
                "_shape",
                "_route",
                "_txlane",
                "_txlane_type",
            )
        ],
        depends=["pgpool_tw/engine/_speedups.h"],
        optional=True,
        # Only PyInit__speedups is exported: the files share plain C names.
        extra_compile_args=["-O2", "-fvisibility=hidden"],
    )
]
if platform.python_implementation() != "CPython" or not sys.platform.startswith("linux"):
    SPEEDUPS = []

setup(
    name="pgpool-tw",
    version=VERSION,
    description="A PostgreSQL connection pooler and proxy on Twisted",
    long_description=Path(__file__).with_name("README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.9",
    package_dir={"": "."},
    # pgpool_tw_dev (the throwaway PostgreSQL and the demo) ships for scripts/run's
    # pgpool-tw-demo; the pooler itself never imports it.
    packages=[
        "pgpool_tw",
        *(f"pgpool_tw.{room}" for room in ROOMS),
        "pgpool_tw_dev",
        "twisted.plugins",
    ],
    # The extension's shared header goes into an sdist with its sources.
    package_data={"twisted": ["plugins/pgpool_plugin.py"], "pgpool_tw.engine": ["_speedups.h"]},
    ext_modules=SPEEDUPS,
    install_requires=[
        "twisted[tls]>=22.10",
        "zope.interface",
        "scramp",
        # /metrics (admin/metrics.py): the metric families and their text format.
        "prometheus_client",
        # PostgreSQL's own parser: the load-balancing classifier and transaction pooling's
        # session state (tested: 8.8). 7.x on Python 3.9, 8.x on 3.10+; not on PyPy, where
        # it does not build (routing then sends every statement to the primary and says so).
        "pglast>=7; platform_python_implementation == 'CPython'",
    ],
    extras_require={
        "test": [
            "psycopg[binary]",
            # tests/e2e/test_transaction_drivers.py (its statement cache); no PyPy wheels.
            "asyncpg; platform_python_implementation == 'CPython'",
            "hypothesis",
            "cryptography",  # the TLS tests make their own certificates
        ],
        "dev": [
            "ruff",
            "mypy",
            "mypy-zope",
        ],
    },
    entry_points={
        "console_scripts": [
            "pgpool-tw-demo = pgpool_tw_dev.demo:main",
            "pgpool-tw-passwd = pgpool_tw.config.passwd:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Database",
    ],
)
