"""`python -m condnet ...`: the same as the `condnet` command."""

import sys

from condnet.runs.cli import main

sys.exit(main())
