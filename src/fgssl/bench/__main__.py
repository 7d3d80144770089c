"""``python -m fgssl.bench``."""

import sys

from fgssl.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
