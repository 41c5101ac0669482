"""The sweep's parent side: hand the runs to a backend, follow them, keep ``sweep.json`` current.

:class:`Sweep` runs the ``todo`` entries of a plan, longest estimated run first, at most
``capacity`` at a time. Before a local run starts its lock is probed: a run locked by another
process (another sweep, an orphaned worker) is put back in the queue and retried after
``LOCK_RETRY_S``. Every state change rewrites ``sweep.json`` atomically. A worker that ends
without a result is recorded ``failed`` in its ``status.json`` (under the run's lock) unless its
status is already final. Ctrl-C or SIGTERM interrupts the workers (runs stay ``running`` at their
last checkpoint), waits up to ``SHUTDOWN_WAIT_S`` for them, then kills the rest.

The scheduler knows nothing of terminals: it writes event lines to, and refreshes, the
:class:`Progress` it is given (:class:`kfac_bench.sweep.display.Display` from the CLI), and it is
configured by a frozen :class:`SweepOptions`, never by ``argparse``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from kfac_bench import store
from kfac_bench.domains import AtLeast, NonNegative, Positive
from kfac_bench.store import FINAL_STATES, RunLock, lock_holder
from kfac_bench.sweep.backends import LocalBackend, RayBackend, available_cores
from kfac_bench.sweep.plan import Entry, estimated_seconds, planned_steps, status_or_none
from kfac_bench.sweep.spec import SweepSpec
from kfac_bench.sweep.worker import Task, now

LOCK_RETRY_S = (1.0, 10.0)  # first and longest wait before retrying a locked run
SHUTDOWN_WAIT_S = 60.0
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep (``kfac-bench sweep`` flags); every value checked on construction.

    ``workers``: runs at a time (None: one per physical core; ray: as many as the cluster fits),
    an integer >= 1. ``cpus_per_run`` (ray; None: cores // workers) a finite number > 0,
    ``gpus_per_run`` (ray) a finite number >= 0. A bad value is a ValueError naming the flag."""

    backend: Literal["local", "ray"] = "local"
    workers: int | None = None
    ray_address: str | None = None
    cpus_per_run: float | None = None
    gpus_per_run: float = 0.0
    retry_failed: bool = False
    progress: bool = True  # a progress bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(
                f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        if self.workers is not None and not AtLeast(1).allows(self.workers):
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.cpus_per_run is not None and not Positive().allows(self.cpus_per_run):
            raise ValueError(f"--cpus-per-run must be a number > 0, got {self.cpus_per_run}")
        if not NonNegative().allows(self.gpus_per_run):
            raise ValueError(f"--gpus-per-run must be a number >= 0, got {self.gpus_per_run}")


class Progress(Protocol):
    """Where the scheduler reports: event lines and a refresh after every poll."""

    def write(self, text: str) -> None: ...

    def refresh(self, running: int) -> None: ...

    def close(self) -> None: ...


class Sweep:
    """The runs of one sweep directory ``out`` and the loop that drives them."""

    def __init__(
        self, spec: SweepSpec, out: Path, entries: list[Entry], options: SweepOptions
    ) -> None:
        self.spec, self.out, self.entries, self.options = spec, out, entries, options
        self.by_name = {e.run.name: e for e in entries}
        self.dirty = True

    # --- sweep.json -----------------------------------------------------------------------------
    def write_index(self) -> None:
        store.write_json(
            self.out / "sweep.json",
            {
                "name": self.spec.name,
                "spec": json_safe(self.spec.raw),
                "spec_hash": self.spec.spec_hash,
                "spec_path": str(self.spec.path),
                "thresholds": self.spec.thresholds,
                "updated": now(),
                "runs": [e.record() for e in self.entries],
            },
        )

    # --- main loop ------------------------------------------------------------------------------
    def execute(self, open_progress: Callable[[list[Entry]], Progress]) -> bool:
        """Run every ``todo`` entry; ``sweep.json`` is current on return. True if interrupted."""
        options = self.options
        todo = [e for e in self.entries if e.todo]
        todo.sort(key=estimated_seconds, reverse=True)  # longest first (stable: spec order)
        cores = available_cores()
        if options.backend == "ray":
            workers = options.workers
            threads = max(1, cores // workers) if workers else 1
        else:
            workers = min(options.workers or cores, max(1, len(todo)))
            threads = max(1, cores // workers)
        self.out.mkdir(parents=True, exist_ok=True)
        self.write_index()
        how = f" ({options.backend}, {workers or 'auto'} workers × {threads} thread(s))"
        print(
            f"sweep {self.spec.name!r}: {len(self.entries)} runs, {len(todo)} to run -> "
            f"{self.out}{how if todo else ''}",
            flush=True,
        )
        interrupted = False
        if todo:
            backend = self._backend(workers, threads)
            progress = open_progress(self.entries)
            try:
                with _sigterm_as_interrupt():
                    try:
                        self._loop(todo, backend, threads, progress)
                    except KeyboardInterrupt:
                        interrupted = True
                        progress.write("interrupted: stopping the workers (resumable) ...")
                        self._shutdown(backend, progress)
            finally:
                progress.close()
                backend.close()
        self.write_index()
        return interrupted

    def _backend(self, workers: int | None, threads: int) -> LocalBackend | RayBackend:
        o = self.options
        if o.backend == "ray":
            return RayBackend(
                workers,
                threads,
                address=o.ray_address,
                cpus_per_run=o.cpus_per_run,
                gpus_per_run=o.gpus_per_run,
            )
        return LocalBackend(workers, threads)

    def _task(self, e: Entry, threads: int) -> Task:
        return Task(
            name=e.run.name,
            run_dir=str(e.run_dir),
            config=e.run.config,
            axes=e.run.axes,
            threads=threads,
            fidelity=self.spec.fidelity and e.fidelity is None,
            sweep=self.spec.name,
        )

    def _loop(self, todo: list[Entry], backend, threads: int, progress: Progress) -> None:
        queue = list(todo)
        while queue or backend.running():
            t = time.monotonic()
            while queue and len(backend.running()) < backend.capacity:
                ready = next((e for e in queue if e.retry_at <= t), None)
                if ready is None:
                    break
                queue.remove(ready)
                holder = lock_holder(ready.run_dir) if isinstance(backend, LocalBackend) else None
                if holder is not None:
                    self._defer(ready, holder, queue, progress)
                    continue
                ready.state, ready.error, ready.fps = "running", None, 0.0
                self.dirty = True
                backend.start(self._task(ready, threads))
            if self.dirty:
                self.write_index()
                self.dirty = False
            for event in backend.poll(timeout=0.5):
                self._handle(event, queue, progress)
            progress.refresh(len(backend.running()))

    def _defer(self, e: Entry, holder: int, queue: list[Entry], progress: Progress) -> None:
        e.lock_waits += 1
        wait = min(LOCK_RETRY_S[1], LOCK_RETRY_S[0] * e.lock_waits)
        e.retry_at = time.monotonic() + wait
        e.state, e.note = "pending", f"locked by pid {holder or '?'}"
        if e.lock_waits in (1, 10) or e.lock_waits % 60 == 0:
            progress.write(
                f"{e.run.name}: locked by another process (pid {holder or '?'}); "
                "waiting for it to finish before resuming"
            )
        queue.append(e)
        self.dirty = True

    def _handle(self, event: tuple, queue: list[Entry], progress: Progress) -> None:
        kind, name = event[0], event[1]
        e = self.by_name.get(name)
        if e is None:
            return
        if kind == "progress":
            _, _, steps, fps, _ret, _episodes = event
            e.steps, e.fps = int(steps), float(fps)
            return
        self.dirty = True
        if kind == "died":
            self._settle_died(e, event[2])
        else:
            result = event[2]
            state = result.get("state")
            if state == "locked":
                self._defer(e, int(result.get("holder") or 0), queue, progress)
                return
            if state == "interrupted":
                e.state, e.steps = "running", int(result.get("steps") or e.steps)
                e.note = "interrupted"
                return
            e.state = state
            e.steps = int(result.get("steps") or e.steps)
            e.error = result.get("error")
            if "fidelity" in result:
                e.fidelity = result["fidelity"]
            if state == "failed":  # usually written by the trainer or the worker already
                self._write_failed(e, e.error or "failed")
        e.fps = 0.0
        e.target = planned_steps(e.run.config) if e.state == "done" else e.steps
        if e.state == "done":
            e.target = max(e.target, e.steps)
        line = f"{e.state:>8}  {e.run.name}  ({e.steps:,} steps)"
        if e.error:
            line += f"  {e.error}"
        if e.fidelity and e.fidelity.get("error"):
            line += f"  [fidelity: {e.fidelity['error']}]"
        progress.write(line)

    def _settle_died(self, e: Entry, reason: str) -> None:
        """A worker ended without a result: trust a final status, else record ``failed``."""
        status = status_or_none(e.run_dir)
        if status is not None:
            e.steps = status.steps
            if status.final:
                e.state, e.error = status.state.value, status.error
                return
        e.state, e.error = "failed", reason
        self._write_failed(e, reason)
        with contextlib.suppress(OSError), (e.run_dir / "train.log").open("a") as log:
            log.write(f"=== {now()} sweep: {reason}\n")

    def _write_failed(self, e: Entry, reason: str) -> None:
        """Record ``failed`` in status.json (under the run's lock) unless it says so already."""
        lock = RunLock(e.run_dir)
        try:
            if lock.acquire() is None and not store.config_drift(e.run_dir, e.run.config):
                store.mark_failed(e.run_dir, reason, require_config=False)
        except Exception as error:  # the sweep must go on
            print(f"{e.run.name}: could not write status.json: {error}", file=sys.stderr)
        finally:
            lock.release()

    def _shutdown(self, backend, progress: Progress) -> None:
        backend.interrupt()
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        forced = False
        while backend.running():
            try:
                for event in backend.poll(timeout=0.5):
                    self._handle_shutdown(event)
            except KeyboardInterrupt:
                forced = True
            if (forced or time.monotonic() > deadline) and backend.running():
                progress.write("killing the remaining workers (their last checkpoint is kept)")
                backend.interrupt(force=True)
                forced = False
                deadline = time.monotonic() + 10
        for e in self.entries:
            if e.state == "running":
                e.fps = 0.0

    def _handle_shutdown(self, event: tuple) -> None:
        e = self.by_name.get(event[1])
        if e is None or event[0] == "progress":
            return
        result = event[2] if event[0] == "result" else {"state": "interrupted"}
        if result.get("state") in (*FINAL_STATES, "failed"):
            e.state, e.error = result["state"], result.get("error")
            e.steps = int(result.get("steps") or e.steps)
            return
        status = status_or_none(e.run_dir)
        if status is None:
            e.state, e.steps = "pending", 0
        else:
            e.state = status.state.value if status.final else "running"
            e.steps = status.steps


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON values (dates and the like as strings)."""
    return json.loads(json.dumps(obj, default=str))
