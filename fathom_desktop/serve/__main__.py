import sys

from fathom_desktop.serve.cli import main

sys.exit(main())
