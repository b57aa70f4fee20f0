"""``python -m unipercept.evaluate``: see :mod:`unipercept.evaluate`."""

import sys

from unipercept.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(main())
