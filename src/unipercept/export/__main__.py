"""``python -m unipercept.export``."""

import sys

from unipercept.export.cli import main

sys.exit(main())
