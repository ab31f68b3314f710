"""``python -m safepool``: see :mod:`safepool.cli`."""
import sys

from safepool.cli import main

if __name__ == "__main__":
    sys.exit(main())
