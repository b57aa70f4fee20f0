"""``python -m unipercept.predict``."""

import sys

from unipercept.predict.cli import main

sys.exit(main())
