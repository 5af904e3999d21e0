"""``python -m skfastflow``: the same command line as the ``skfastflow`` console script."""

import sys

from .cli import main

sys.exit(main())
