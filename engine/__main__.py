"""``python -m engine``: see :mod:`engine.cli`."""

import sys

from engine.cli import main

if __name__ == "__main__":  # spawned worker processes (engine batch) re-import this module
    sys.exit(main())
