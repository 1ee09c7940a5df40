"""`python -m fathom_desktop` starts the chat window, like `fathom-desktop`."""

from __future__ import annotations

import sys

from fathom_desktop.app import main

sys.exit(main())
