"""``python -m loadtests.bench``: the side-by-side benchmark and the whole sale."""

import sys

from .cli import main

sys.exit(main())
