"""``python -m bench``: every benchmark, the table against the anchors, plots (see :mod:`bench.suite`)."""

import sys

from bench.suite import main

sys.exit(main())
