"""`python -m condnet.runs.cli`: the `condnet` command."""

import sys

from condnet.runs.cli import main

sys.exit(main())
