#!/usr/bin/env python
"""``python scripts/benchmark.py ...`` = ``python -m benchmarks ...`` (benchmarks/cli.py), from any
directory: the repository root goes on sys.path, since the benchmarks package is not installed."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.cli import main  # noqa: E402

main()
