"""Where a run's time goes: wall-clock seconds per phase, the ``time_*`` columns of updates.csv.

The trainer and the optimizers mark their phases with ``with timing.phase("stats"):``; the
trainer writes the seconds spent in each phase since the previous ``updates.csv`` row (so a row's
``time_*`` sum to about its interval's wall time, minus logging and checkpoints). Phases:

* ``act`` — the policy's forward pass and action sampling during collection;
* ``env`` — ``env.step`` and observation normalisation;
* ``returns`` — bootstrap values and n-step/GAE returns;
* ``update`` — the whole update rule, which contains the next five;
* ``fisher`` — the K-FAC Fisher pass (forward, sampled loss, backward to the layer outputs);
* ``stats`` — the factor statistics and their running averages;
* ``inverse`` — the decompositions (eigh/Cholesky) on the main thread, or installing an
  asynchronous job's result (the background thread's own time is not on this clock);
* ``precondition`` — applying the decompositions to the gradients;
* ``critic`` — a separate value network's own fit (``optim.critic = separate-*``).

``update`` minus the four K-FAC phases and ``critic`` is the training loss's forward/backward,
the trust region, the parameter step and the KL measurement.

One clock per process (a sweep runs each run in its own worker process). On CUDA the clock
synchronises the device at every phase boundary, so the phases are the device's time rather than
the launch time; ``log.phase_times = false`` switches the clock off (the columns stay empty).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PHASES = ("act", "env", "returns", "update", "fisher", "stats", "inverse", "precondition", "critic")
COLUMNS = [f"time_{name}" for name in PHASES]


class PhaseClock:
    """Running seconds per phase; :meth:`take` reads and restarts them."""

    def __init__(self) -> None:
        self.enabled = False
        self.synchronize: Callable[[], None] | None = None
        self.totals = dict.fromkeys(PHASES, 0.0)

    def start(self, enabled: bool, synchronize: Callable[[], None] | None = None) -> None:
        """Zero the totals; ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs at boundaries."""
        self.enabled, self.synchronize = enabled, synchronize
        self.totals = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.synchronize is not None:
            self.synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.synchronize is not None:
                self.synchronize()
            self.totals[name] += time.perf_counter() - started

    def take(self) -> dict[str, float | None]:
        """{``time_<phase>``: seconds since the last take} (None values when switched off)."""
        if not self.enabled:
            return dict.fromkeys(COLUMNS)
        row = {f"time_{name}": round(seconds, 6) for name, seconds in self.totals.items()}
        self.totals = dict.fromkeys(PHASES, 0.0)
        return row


CLOCK = PhaseClock()
phase = CLOCK.phase
