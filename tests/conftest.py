"""Test-session setup shared by every test module."""

import os

# Idle OpenMP threads spin while waiting by default; with the 2 cores shared by other jobs that made torch's
# small element-wise ops 10 to 60x slower. Passive waiting costs nothing on an idle machine. Set here, before
# any test module imports torch; a value set by the caller wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
