"""``python -m fastmtl ...`` runs the command-line interface (same as the ``fastmtl`` script)."""

import sys

from fastmtl.cli import main

sys.exit(main())
