"""Benchmarks and the claims measurement, each run from the repository root as ``python -m benchmarks.NAME``."""

import os

# OpenMP threads that spin while waiting (the default) lose 10 to 60x on elementwise torch ops when the 2 cores
# are shared with other processes; passive waiting costs nothing on an idle machine. `python -m benchmarks.NAME`
# imports this package before the benchmark, so this is set before torch loads. A value set by the caller wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
