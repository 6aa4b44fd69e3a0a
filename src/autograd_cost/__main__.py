"""Run the profiler's command line: `python -m autograd_cost profile --help`."""

import sys

from autograd_cost.cli import main

if __name__ == "__main__":
    sys.exit(main())
