"""``python -m brainage``: the ``brainage`` command (what torchrun starts on each rank)."""

import sys

from brainage.cli import main

sys.exit(main())
