"""``python -m loadtests``: the headless stampede with its verification."""

import sys

from .run import main

sys.exit(main())
