"""``python -m benchmarks.quality.gowalla``: the Gowalla grid's command line (see the package docstring)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
