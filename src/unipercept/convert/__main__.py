"""``python -m unipercept.convert``."""

import sys

from unipercept.convert.cli import main

sys.exit(main())
