"""``python -m vulnscope``: the command line."""

import sys

from vulnscope.cli import main

sys.exit(main())
