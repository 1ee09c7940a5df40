"""`python -m convert ...` runs the `fathom-convert` command line."""

from __future__ import annotations

import sys

from convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
