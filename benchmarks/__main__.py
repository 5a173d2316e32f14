"""``python -m benchmarks``: the benchmark driver (benchmarks/cli.py)."""
from benchmarks.cli import main

if __name__ == "__main__":
    main()
