"""``python -m agent`` is the same program as ``droprun``."""

import sys

from agent.cli import main

sys.exit(main())
