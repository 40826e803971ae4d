"""`python -m directanimator ...`: headless inference."""

import os
import sys

# Idle OpenMP threads spin while waiting by default; on a machine whose few cores are shared with other
# processes that made torch's small element-wise ops 10 to 60x slower (2 cores, cue extraction). Passive waiting
# costs nothing on an idle machine. It must be set before torch is imported; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402  (after the environment is set)

sys.exit(main())
