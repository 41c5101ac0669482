"""kfac-bench: K-FAC factor-statistic variants inside one ACKTR trainer, swept and analysed.

Importing the package sets ``GOMP_SPINCOUNT=10000`` unless it is already set, so it takes
effect when kfac-bench is imported before torch (the CLI, sweep workers): libgomp's idle
threads otherwise spin ~300 000 iterations at every parallel-region barrier, and with one other
CPU-bound process on the 2-core machine the spinning thread and the descheduled one stall
each other. Measured with ``scripts/contention.py --env BreakoutNoFrameskip-v4 --preset
atari-tuned --steps 19200 --hogs 1`` (issue 16): contended/solo 0.30 by default, 0.51 with this
setting (solo 525 vs 526 env-steps/s), 0.56 with ``OMP_WAIT_POLICY=PASSIVE`` (solo 505).
"""

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
