"""``python -m bridge`` is the same as the ``kard-bridge`` console script."""

from __future__ import annotations

import sys

from bridge.cli import main

sys.exit(main())
