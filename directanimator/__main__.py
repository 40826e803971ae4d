"""`python -m directanimator ...`: headless inference."""

import sys

from .cli import main

sys.exit(main())
