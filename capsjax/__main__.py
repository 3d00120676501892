"""`python -m capsjax ...` is the same as the `capsjax` command."""

import sys

from capsjax.cli import main

sys.exit(main())
