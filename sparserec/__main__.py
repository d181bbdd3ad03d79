"""``python -m sparserec <stage> ...``: the ``sparserec`` command (see sparserec/__init__.py)."""

import sys

from sparserec import main

if __name__ == "__main__":
    sys.exit(main())
