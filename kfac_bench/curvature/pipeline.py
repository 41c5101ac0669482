"""``kfac.pipelined_stats``: a batch's factor statistics computed on a background thread while the
trainer goes on (the rest of the update, then collecting the next batch), issue 16.

Timeline of update k with pipelining on (``KFAC.step``)::

    fisher pass k          capture layer inputs and output gradients of batch k (kept, not folded)
    step k:  join          wait for the statistics of batch k − 1, fold them into the running
                           averages (on the training thread: the EMA is cheap, the products are not)
             decompose / precondition / apply   with running factors through batch k − 1
             submit        start the statistics of batch k (the variant's Gram products)
    ... KL measurement, critic fit, collecting batch k + 1: overlapped with the statistics

So every step preconditions with the factors one Fisher batch older than the synchronous
schedule (``stats_staleness`` = 1 in updates.csv), except the first, whose batch is folded
synchronously because there is nothing older. The thread only computes: it reads its batch's
tensors and writes nothing the training thread reads until ``join`` returns its result, so a run
is exactly as deterministic as without pipelining. The overlap comes from ALE's C++ env threads
and torch kernels releasing the GIL; on a 2-core machine it competes with them for the cores.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

Result = TypeVar("Result")


class BackgroundSlot(Generic[Result]):
    """At most one background computation in flight; :meth:`join` returns its result (or raises
    what it raised) and leaves the slot empty."""

    def __init__(self, name: str) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._name = name
        self._pending: Future[Result] | None = None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, work: Callable[[], Result]) -> None:
        if self._pending is not None:
            raise RuntimeError(f"{self._name}: a computation is already in flight")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._pending = self._pool.submit(work)

    def join(self) -> Result | None:
        """The in-flight computation's result (None when the slot is empty)."""
        pending, self._pending = self._pending, None
        return None if pending is None else pending.result()

    def close(self) -> None:
        """Drop what is in flight (waiting for it) and stop the thread; idempotent."""
        if self._pending is not None:
            self._pending.exception()  # wait; an error here has no step left to report to
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
