"""``python -m benchmarks``: see benchmarks/benchmark.py."""

import sys

from .benchmark import main

sys.exit(main())
