"""``python -m pgpool_tw_dev.soak``: what ``scripts/soak`` runs."""

from __future__ import annotations

import sys

from pgpool_tw_dev.soak.run import main

sys.exit(main())
