"""``kfac-bench sweep``: run every run of a sweep spec, resumably, on local processes or Ray.

Usage::

    kfac-bench sweep runs/quick.toml                  # local process pool, one worker per core
    kfac-bench sweep runs/quick.toml --workers 2
    kfac-bench sweep runs/quick.toml --dry-run        # validate, print the run table; run nothing
    kfac-bench sweep runs/quick.toml --retry-failed   # also rerun runs recorded as failed
    kfac-bench sweep runs/atari.toml --backend ray [--ray-address HOST:6379]

The spec format is in :mod:`kfac_bench.sweep_spec`. A sweep writes ``<spec dir>/<name>/``
(``runs/quick/`` for ``runs/quick.toml``; ``--out`` to choose another)::

    runs/<name>/sweep.json       name, spec, spec_hash, thresholds, runs: [{name, label, variant,
                                 env, seed, axes, preset, state, steps, error[, fidelity]}]
    runs/<name>/<run>/           the run directory of DESIGN.md §5, plus train.log (the worker's
                                 stdout/stderr and the traceback of a failure) and .lock

Lifecycle:

* Validation first (every problem is printed, one line each; nothing is written on error), then
  each run's state is read from its directory: ``done`` and ``diverged`` runs are results and
  are skipped; ``running`` (interrupted) runs resume from their checkpoint (the trainer does it);
  ``failed`` runs are rerun only with ``--retry-failed`` and otherwise reported as failed again.
  A run whose ``config.json`` differs from what the spec now gives is reported as failed with the
  differing keys, and never touched.
* Local backend: each run is one spawned process (``multiprocessing`` spawn context, one run per
  process), at most ``--workers`` at a time, longest estimated run first. Each worker gets
  ``cores // workers`` torch threads (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and
  ``torch.set_num_threads``; a ``torch_threads`` in the run's config, which the classic and MinAtar
  families set to 1, wins — it is part of the config, so it is not changed per machine). Workers
  report progress through a pipe each; a worker that dies without reporting (killed, out of
  memory) is recorded ``failed`` in its ``status.json`` by the sweep, with the reason.
* Ray backend (``pip install 'kfac-bench[ray]'``): the same runs as Ray tasks with
  ``num_cpus = cores // workers`` (or ``--cpus-per-run``, ``--gpus-per-run``) on a local Ray
  instance, or on the cluster of ``--ray-address`` / ``RAY_ADDRESS`` (the run directories must be
  on a filesystem shared with the workers, and kfac-bench installed there). Progress comes back
  through a ``ray.util.queue.Queue``.
* Every worker holds an exclusive ``fcntl.flock`` on ``<run>/.lock`` while it writes the run; a
  run locked by someone else (another sweep, or a worker orphaned by a killed sweep, which exits
  at its next update when it sees its parent gone) is put back in the queue and retried.
* ``sweep.json`` is rewritten atomically whenever a run changes state. Ctrl-C (or SIGTERM) stops
  the workers cleanly (runs stay ``running`` at their last checkpoint) and exits 130. The exit
  status is 1 when any run is failed (or left unfinished), else 0 (``diverged`` is a result); a
  summary table (run, state, steps, error) ends every sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any

from kfac_bench import store
from kfac_bench.config import RunConfig
from kfac_bench.rl.envs import env_family
from kfac_bench.store import FINAL_STATES, RunLock, lock_holder
from kfac_bench.sweep_spec import PlannedRun, SpecError, SweepSpec, load_spec, planned_steps

# Rough single-thread env steps/s per family on a laptop core (see runs/quick.toml); only used to
# order the queue longest-first and for the dry run's estimate.
FAMILY_STEPS_PER_SECOND = {"classic": 20_000, "generic": 10_000, "minatar": 5_000, "atari": 1_000}
PROGRESS_INTERVAL_S = 0.5
LOCK_RETRY_S = (1.0, 10.0)  # first and longest wait before retrying a locked run
SHUTDOWN_WAIT_S = 60.0


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "spec format: see kfac_bench/sweep_spec.py (or the README).\n"
        "exit status: 0 all runs done/diverged, 1 some run failed, 2 bad spec, 130 interrupted."
    )
    parser.add_argument("spec", type=Path, help="sweep spec, e.g. runs/quick.toml")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="runs at a time (default: physical cores; ray: as many as the cluster fits)",
    )
    parser.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: a spawned process per run (default); ray: Ray tasks (the ray extra)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance)",
    )
    parser.add_argument(
        "--cpus-per-run",
        type=float,
        default=None,
        metavar="C",
        help="ray: num_cpus per task (default: cores // workers, 1 without --workers)",
    )
    parser.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        metavar="G",
        help="ray: num_gpus per task, e.g. 0.25 to share a GPU between 4 runs (default 0)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and list; run nothing")
    parser.add_argument(
        "--retry-failed", action="store_true", help="rerun failed runs (from their checkpoint)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="sweep directory (default: <spec dir>/<name>, e.g. runs/quick)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        for problem in error.problems:
            print(f"kfac-bench: error: {error.path}: {problem}", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.cpus_per_run is not None and not (0 < args.cpus_per_run < math.inf):
        raise ValueError(f"--cpus-per-run must be a number > 0, got {args.cpus_per_run}")
    if not (0 <= args.gpus_per_run < math.inf):
        raise ValueError(f"--gpus-per-run must be a number >= 0, got {args.gpus_per_run}")
    out = Path(args.out) if args.out is not None else spec.path.parent / spec.name
    entries = [inspect_run(r, out / r.name, retry_failed=args.retry_failed) for r in spec.runs]
    if spec.fidelity:
        _plan_fidelity(entries)
    if args.dry_run:
        print_plan(spec, out, entries)
        return 0
    sweep = Sweep(spec, out, entries, args)
    return sweep.execute()


# ---------------------------------------------------------------------------------------------
# the state of each run, from its directory


@dataclass
class Entry:
    """One run as the sweep sees it; ``todo`` runs are handed to a worker."""

    run: PlannedRun
    run_dir: Path
    state: str  # pending | running | done | failed | diverged
    steps: int = 0
    error: str | None = None
    todo: bool = True
    note: str = ""  # dry-run / display remark: "resume at 12,800", "retry", ...
    target: int = 0
    fidelity: dict[str, Any] | None = None
    fps: float = 0.0
    retry_at: float = 0.0
    lock_waits: int = 0

    def record(self) -> dict[str, Any]:
        r = self.run
        item = {
            "name": r.name,
            "label": r.label,
            "variant": r.variant,
            "env": r.env,
            "seed": r.seed,
            "axes": r.axes,
            "preset": r.preset,
            "state": self.state,
            "steps": self.steps,
            "total_steps": r.config.total_steps,
            "error": self.error,
        }
        if self.fidelity is not None:
            item["fidelity"] = self.fidelity
        return item


_SPEC_CHANGED = (
    "the spec (or a code default) changed since this run started; restore it, or move the run "
    "directory away to start over"
)
NOT_RETRYABLE = ("config changed", "unreadable")  # --retry-failed cannot help these


def inspect_run(run: PlannedRun, run_dir: Path, *, retry_failed: bool) -> Entry:
    """What to do with one run, from ``config.json`` and ``status.json`` in its directory."""
    entry = Entry(run, run_dir, "pending", target=planned_steps(run.config))
    try:
        diffs = store.config_drift(run_dir, run.config)
        if diffs:
            entry.state, entry.todo, entry.note = "failed", False, "config changed"
            entry.error = _local(store.drift_error(run_dir, diffs, _SPEC_CHANGED))
            return entry
        status = store.read_status(run_dir)
    except (OSError, ValueError) as error:
        entry.state, entry.todo, entry.note = "failed", False, "unreadable"
        entry.error = _local(error) if isinstance(error, store.RunDirError) else str(error)
        return entry
    if status is None:
        return entry
    entry.steps, entry.error = status.steps, status.error
    if status.final:
        entry.state, entry.todo, entry.target = status.state.value, False, entry.steps
    elif status.state is store.RunState.FAILED:
        entry.state = "failed" if not retry_failed else "pending"
        entry.todo = retry_failed
        entry.note = "retry" if retry_failed else "--retry-failed to rerun"
        if not retry_failed:
            entry.target = entry.steps
    else:
        entry.error = None
        entry.note = f"resume at {entry.steps:,}" if entry.steps else "restart"
    return entry


def _local(error: store.RunDirError) -> str:
    """The error with the file named inside its run directory (the table shows the run)."""
    return f"{error.path.name} {error.problem}; {error.action}"


def _plan_fidelity(entries: list[Entry]) -> None:
    """Fidelity for finished ACKTR runs: scheduled unless ``fidelity.csv`` is already there."""
    available = importlib.util.find_spec("kfac_bench.fidelity") is not None
    for e in entries:
        if e.run.config.optim.algo != "acktr":
            continue
        if not available:
            e.fidelity = {"state": "failed", "error": _FIDELITY_MISSING}
        elif e.state == "done" and not (e.run_dir / "fidelity.csv").exists():
            e.todo, e.note = True, "fidelity only"
        elif e.state == "done":
            e.fidelity = {"state": "done", "error": None}


_FIDELITY_MISSING = (
    "kfac_bench.fidelity is not available (module missing); the run itself is unaffected"
)


def print_plan(spec: SweepSpec, out: Path, entries: list[Entry]) -> None:
    axes = list(dict.fromkeys(k for e in entries for k in e.run.axes))
    header = ["run", "steps", "state", *axes]
    rows = []
    for e in entries:
        state = e.state if not e.note else f"{e.state} ({e.note})"
        rows.append(
            [
                e.run.name,
                f"{e.run.config.total_steps:,}",
                state,
                *(str(e.run.axes.get(a, "-")) for a in axes),
            ]
        )
    _print_table(header, rows)
    todo = [e for e in entries if e.todo]
    steps = sum(max(0, e.target - e.steps) for e in todo)
    cpu_s = sum(_estimated_seconds(e) for e in todo)
    counts = _count(entries)
    print(
        f"\nsweep {spec.name!r} -> {out}  (spec hash {spec.spec_hash})\n"
        f"{len(entries)} runs: {_counts_text(counts)}; {len(todo)} to run, "
        f"{steps:,} env steps (roughly {_duration(cpu_s)} of worker time at one CPU thread each)"
    )


def _estimated_seconds(e: Entry) -> float:
    rate = FAMILY_STEPS_PER_SECOND.get(env_family(e.run.env), 5_000)
    return max(0, e.target - e.steps) / rate + 3.0  # + process start-up


# ---------------------------------------------------------------------------------------------
# the worker side (runs in a spawned process or a Ray task)


class Orphaned(BaseException):
    """The sweep that started this worker is gone: stop now (resumable), write nothing more."""


@dataclass(frozen=True)
class Task:
    name: str
    run_dir: str
    config: RunConfig
    axes: dict[str, Any]
    threads: int
    fidelity: bool
    sweep: str


@contextlib.contextmanager
def redirect_output(log_path: Path) -> Iterator[None]:
    """Point fds 1 and 2 (and so print, warnings, C libraries) at ``log_path``; restore after."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _error_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run_fidelity(run_dir: Path) -> dict[str, Any]:
    try:
        fidelity = importlib.import_module("kfac_bench.fidelity")
    except ModuleNotFoundError as error:
        if error.name in ("kfac_bench.fidelity", "kfac_bench"):
            return {"state": "failed", "error": _FIDELITY_MISSING}
        traceback.print_exc()
        return {"state": "failed", "error": _error_line(error)}
    try:
        fidelity.run_for_run_dir(run_dir)
    except Exception as error:
        traceback.print_exc()
        return {"state": "failed", "error": _error_line(error)}
    return {"state": "done", "error": None}


def execute(task: Task, send: Callable[[tuple], None], parent_pid: int | None) -> dict[str, Any]:
    """Lock the run directory, train (start, resume or skip), optionally run fidelity.

    Returns ``{"state": done|diverged|failed|interrupted|locked, "steps", "error", ...}``.
    ``parent_pid``: stop (resumably) as soon as this process's parent is not that pid any more.
    """
    run_dir = Path(task.run_dir)
    lock = RunLock(run_dir)
    holder = lock.acquire()
    if holder is not None:
        return {"state": "locked", "holder": holder}
    try:
        with redirect_output(run_dir / "train.log"):
            print(
                f"=== {_now()} sweep {task.sweep!r}: {task.name} (pid {os.getpid()}, "
                f"{task.threads} thread(s))",
                flush=True,
            )
            return _train(task, run_dir, send, parent_pid)
    finally:
        lock.release()


def _train(task: Task, run_dir: Path, send, parent_pid: int | None) -> dict[str, Any]:
    import torch

    from kfac_bench.rl.trainer import train

    torch.set_num_threads(max(1, task.threads))
    last = [0.0]

    def on_progress(p) -> None:
        if parent_pid is not None and os.getppid() != parent_pid:
            raise Orphaned(f"parent {parent_pid} is gone")
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or p.steps >= p.total_steps:
            last[0] = now
            try:
                send(("progress", task.name, p.steps, p.fps, p.recent_return, p.episodes))
            except (BrokenPipeError, EOFError, ConnectionError) as error:
                raise Orphaned(f"lost the sweep ({error})") from error

    try:
        result = train(task.config, run_dir, axes=task.axes, on_progress=on_progress)
    except (KeyboardInterrupt, Orphaned) as error:
        print(
            f"=== {_now()} stopped ({type(error).__name__}); resumable from the last checkpoint",
            flush=True,
        )
        return {"state": "interrupted", "steps": _status_steps(run_dir), "error": None}
    except Exception as error:
        traceback.print_exc()
        message = _error_line(error)
        if not isinstance(error, store.RunDirError):  # a damaged/foreign directory stays as is
            store.mark_failed(run_dir, message, require_config=False)
        print(f"=== {_now()} failed: {message}", flush=True)
        return {"state": "failed", "steps": _status_steps(run_dir), "error": message}
    state = result.state.removeprefix("already-")
    print(
        f"=== {_now()} {result.state} at {result.steps:,} steps"
        + (f": {result.error}" if result.error else ""),
        flush=True,
    )
    out: dict[str, Any] = {"state": state, "steps": result.steps, "error": result.error}
    if task.fidelity and task.config.optim.algo == "acktr" and state == "done":
        out["fidelity"] = _run_fidelity(run_dir)
        print(f"=== {_now()} fidelity: {out['fidelity']}", flush=True)
    return out


def _status_steps(run_dir: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        status = store.read_status(run_dir)
        return status.steps if status is not None else 0
    return 0


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM -> KeyboardInterrupt, and ask Linux to send SIGTERM when the parent dies."""

    def stop(signum, frame):
        # One interrupt per worker: later ones (terminal Ctrl-C and the sweep's own SIGINT,
        # the parent's death) must not break the clean stop that the first one started.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        raise KeyboardInterrupt("parent gone before start")


def _local_worker(task: Task, conn, parent_pid: int) -> None:
    """Entry point of a spawned worker process: one run, then exit."""
    result: dict[str, Any]
    try:
        _die_with_parent(parent_pid)
        result = execute(task, conn.send, parent_pid)
    except (KeyboardInterrupt, Orphaned):
        result = {"state": "interrupted", "steps": 0, "error": None}
    except Exception as error:  # outside the trainer: lock, log file, imports
        traceback.print_exc()
        result = {"state": "failed", "steps": 0, "error": _error_line(error)}
    with contextlib.suppress(Exception):
        conn.send(("result", task.name, result))
    with contextlib.suppress(Exception):
        conn.close()


def _ray_worker(task: Task, queue) -> dict[str, Any]:
    """Body of a Ray task (progress through a ``ray.util.queue.Queue``)."""

    def send(message: tuple) -> None:
        with contextlib.suppress(Exception):
            queue.put_nowait(message)

    try:
        return execute(task, send, None)
    except KeyboardInterrupt:
        return {"state": "interrupted", "steps": 0, "error": None}


# ---------------------------------------------------------------------------------------------
# backends: start a task, report events ("progress" | "result" | "died", name, ...)


def available_cores() -> int:
    """Physical cores this process may use (logical CPUs if psutil cannot tell)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        logical = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:
        physical = logical
    return max(1, min(logical, physical))


@contextlib.contextmanager
def _thread_env(threads: int) -> Iterator[None]:
    """OMP/MKL/OpenBLAS thread counts that spawned children inherit at start."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: str(threads) for n in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class LocalBackend:
    """One spawned process per run; a one-way pipe per worker for its messages."""

    def __init__(self, workers: int, threads: int) -> None:
        self.capacity = workers
        self.threads = threads
        self.context = multiprocessing.get_context("spawn")
        self.procs: dict[str, tuple[Any, Any]] = {}  # name -> (process, connection)
        self.results: dict[str, dict] = {}

    def start(self, task: Task) -> None:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_local_worker,
            args=(task, writer, os.getpid()),
            name=f"sweep:{task.name}",
            daemon=True,
        )
        with _thread_env(self.threads):
            process.start()
        writer.close()
        self.procs[task.name] = (process, reader)

    def _drain(self, name: str, events: list) -> None:
        _, reader = self.procs[name]
        try:
            while reader.poll():
                message = reader.recv()
                if message[0] == "result":
                    self.results[name] = message[2]
                else:
                    events.append(message)
        except (EOFError, OSError, ValueError, TypeError):
            pass  # a worker killed mid-message; its end is handled below

    def poll(self, timeout: float) -> list[tuple]:
        if not self.procs:
            time.sleep(timeout)
            return []
        waitables = [
            x for process, reader in self.procs.values() for x in (reader, process.sentinel)
        ]
        wait_connections(waitables, timeout=timeout)
        events: list[tuple] = []
        for name in list(self.procs):
            process, reader = self.procs[name]
            self._drain(name, events)
            if process.is_alive():
                continue
            process.join()
            self._drain(name, events)
            reader.close()
            del self.procs[name]
            if name in self.results:
                events.append(("result", name, self.results.pop(name)))
            else:
                events.append(("died", name, _exit_reason(process.exitcode)))
        return events

    def running(self) -> list[str]:
        return list(self.procs)

    def interrupt(self, force: bool = False) -> None:
        for process, _ in self.procs.values():
            if process.is_alive() and process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL if force else signal.SIGINT)

    def close(self) -> None:
        for process, reader in self.procs.values():
            process.join(timeout=5)
            reader.close()
        self.procs.clear()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint} before it reported a result"
    return f"worker process exited with code {code} before it reported a result"


class RayBackend:
    """Ray tasks on a local instance or a cluster; progress through a Ray queue."""

    def __init__(self, args: argparse.Namespace, workers: int | None, threads: int) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError(
                "--backend ray needs the ray extra: pip install 'kfac-bench[ray]'"
            ) from None
        import logging

        from ray.util.queue import Queue

        self.ray = ray
        address = args.ray_address or os.environ.get("RAY_ADDRESS")
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            common = {"log_to_driver": False, "logging_level": logging.WARNING}
            if address:
                ray.init(address=address, **common)
            else:
                ray.init(
                    num_cpus=available_cores(),
                    include_dashboard=False,
                    object_store_memory=100 * 1024 * 1024,
                    **common,
                )
        self.capacity = workers or 10**9
        self.threads = threads
        cpus = args.cpus_per_run if args.cpus_per_run is not None else threads
        self.remote = ray.remote(_ray_worker).options(
            num_cpus=cpus, num_gpus=args.gpus_per_run or 0, max_retries=0
        )
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.refs: dict[Any, str] = {}

    def start(self, task: Task) -> None:
        self.refs[self.remote.remote(task, self.queue)] = task.name

    def poll(self, timeout: float) -> list[tuple]:
        ray = self.ray
        events: list[tuple] = []
        with contextlib.suppress(Exception):
            size = self.queue.qsize()
            if size:
                events += self.queue.get_nowait_batch(size)
        if not self.refs:
            time.sleep(timeout)
            return events
        ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=0)
        for ref in ready:
            name = self.refs.pop(ref)
            try:
                events.append(("result", name, ray.get(ref)))
            except ray.exceptions.TaskCancelledError:
                events.append(("result", name, {"state": "interrupted", "steps": 0}))
            except ray.exceptions.RayTaskError as error:
                cause = error.cause if isinstance(error.cause, BaseException) else error
                events.append(("result", name, {"state": "failed", "error": _error_line(cause)}))
            except ray.exceptions.RayError as error:
                events.append(("died", name, f"Ray task lost: {_error_line(error)}"))
        return events

    def running(self) -> list[str]:
        return list(self.refs.values())

    def interrupt(self, force: bool = False) -> None:
        for ref in list(self.refs):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=force)

    def close(self) -> None:
        if self.owns_ray:
            with contextlib.suppress(Exception):
                self.ray.shutdown()


# ---------------------------------------------------------------------------------------------
# the sweep (parent side)


class Display:
    """tqdm bar over all env steps (on a terminal), event lines, a periodic line otherwise."""

    def __init__(self, entries: list[Entry], enabled: bool) -> None:
        self.entries = entries
        self.bar = None
        self.last_line = time.monotonic()
        self.start = time.monotonic()
        self.start_steps = self.steps()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total(),
                initial=self.start_steps,
                unit="step",
                unit_scale=True,
                dynamic_ncols=True,
                file=sys.stderr,
                bar_format="{percentage:3.0f}%|{bar:16}| {n_fmt}/{total_fmt} steps "
                "[{elapsed}<{remaining}{postfix}]",
            )

    def steps(self) -> int:
        return sum(min(e.steps, e.target) for e in self.entries)

    def total(self) -> int:
        return sum(e.target for e in self.entries)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def refresh(self, running: int) -> None:
        counts = _count(self.entries)
        fps = sum(e.fps for e in self.entries if e.state == "running")
        status = (
            f"done {counts.get('done', 0) + counts.get('diverged', 0)} | running {running} | "
            f"failed {counts.get('failed', 0)} | pending {counts.get('pending', 0)} | "
            f"{_si(fps)} steps/s"
        )
        if self.bar is not None:
            total, steps = self.total(), self.steps()
            if total != self.bar.total:
                self.bar.total = total
            if steps >= self.bar.n:
                self.bar.update(steps - self.bar.n)
            else:
                self.bar.n = steps
            self.bar.set_postfix_str(status, refresh=True)
        elif time.monotonic() - self.last_line > 30:
            self.last_line = time.monotonic()
            done, total = self.steps(), max(1, self.total())
            elapsed = time.monotonic() - self.start
            rate = (done - self.start_steps) / elapsed if elapsed > 0 else 0.0
            eta = _duration((total - done) / rate) if rate > 0 else "?"
            print(f"[{100 * done / total:5.1f}%] {status} | ETA {eta}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Sweep:
    def __init__(self, spec: SweepSpec, out: Path, entries: list[Entry], args: argparse.Namespace):
        self.spec, self.out, self.entries, self.args = spec, out, entries, args
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
                "updated": _now(),
                "runs": [e.record() for e in self.entries],
            },
        )

    # --- main loop ------------------------------------------------------------------------------
    def execute(self) -> int:
        todo = [e for e in self.entries if e.todo]
        todo.sort(key=_estimated_seconds, reverse=True)  # longest first (stable: spec order)
        cores = available_cores()
        if self.args.backend == "ray":
            workers = self.args.workers
            threads = max(1, cores // workers) if workers else 1
        else:
            workers = min(self.args.workers or cores, max(1, len(todo)))
            threads = max(1, cores // workers)
        self.out.mkdir(parents=True, exist_ok=True)
        self.write_index()
        how = f" ({self.args.backend}, {workers or 'auto'} workers × {threads} thread(s))"
        print(
            f"sweep {self.spec.name!r}: {len(self.entries)} runs, {len(todo)} to run -> "
            f"{self.out}{how if todo else ''}",
            flush=True,
        )
        interrupted = False
        if todo:
            backend = (
                RayBackend(self.args, workers, threads)
                if self.args.backend == "ray"
                else LocalBackend(workers, threads)
            )
            display = Display(
                self.entries, enabled=not self.args.no_progress and sys.stderr.isatty()
            )
            try:
                with _sigterm_as_interrupt():
                    try:
                        self._loop(todo, backend, threads, display)
                    except KeyboardInterrupt:
                        interrupted = True
                        display.write("interrupted: stopping the workers (resumable) ...")
                        self._shutdown(backend, display)
            finally:
                display.close()
                backend.close()
        self.write_index()
        self.print_summary()
        if interrupted:
            print(
                f"interrupted; run `kfac-bench sweep {self.spec.path}` again to resume",
                file=sys.stderr,
            )
            return 130
        unfinished = [e for e in self.entries if e.state in ("running", "pending")]
        if unfinished:
            print(
                f"{len(unfinished)} run(s) unfinished; run the sweep again to resume them",
                file=sys.stderr,
            )
        return 1 if unfinished or any(e.state == "failed" for e in self.entries) else 0

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

    def _loop(self, todo: list[Entry], backend, threads: int, display: Display) -> None:
        queue = list(todo)
        while queue or backend.running():
            now = time.monotonic()
            while queue and len(backend.running()) < backend.capacity:
                ready = next((e for e in queue if e.retry_at <= now), None)
                if ready is None:
                    break
                queue.remove(ready)
                holder = lock_holder(ready.run_dir) if isinstance(backend, LocalBackend) else None
                if holder is not None:
                    self._defer(ready, holder, queue, display)
                    continue
                ready.state, ready.error, ready.fps = "running", None, 0.0
                self.dirty = True
                backend.start(self._task(ready, threads))
            if self.dirty:
                self.write_index()
                self.dirty = False
            for event in backend.poll(timeout=0.5):
                self._handle(event, queue, display)
            display.refresh(len(backend.running()))

    def _defer(self, e: Entry, holder: int, queue: list[Entry], display: Display) -> None:
        e.lock_waits += 1
        wait = min(LOCK_RETRY_S[1], LOCK_RETRY_S[0] * e.lock_waits)
        e.retry_at = time.monotonic() + wait
        e.state, e.note = "pending", f"locked by pid {holder or '?'}"
        if e.lock_waits in (1, 10) or e.lock_waits % 60 == 0:
            display.write(
                f"{e.run.name}: locked by another process (pid {holder or '?'}); "
                "waiting for it to finish before resuming"
            )
        queue.append(e)
        self.dirty = True

    def _handle(self, event: tuple, queue: list[Entry], display: Display) -> None:
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
            reason = event[2]
            self._settle_died(e, reason)
        else:
            result = event[2]
            state = result.get("state")
            if state == "locked":
                self._defer(e, int(result.get("holder") or 0), queue, display)
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
        display.write(line)

    def _settle_died(self, e: Entry, reason: str) -> None:
        """A worker ended without a result: trust a final status, else record ``failed``."""
        status = _status_or_none(e.run_dir)
        if status is not None:
            e.steps = status.steps
            if status.final:
                e.state, e.error = status.state.value, status.error
                return
        e.state, e.error = "failed", reason
        self._write_failed(e, reason)
        with contextlib.suppress(OSError), (e.run_dir / "train.log").open("a") as log:
            log.write(f"=== {_now()} sweep: {reason}\n")

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

    def _shutdown(self, backend, display: Display) -> None:
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
                display.write("killing the remaining workers (their last checkpoint is kept)")
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
        status = _status_or_none(e.run_dir)
        if status is None:
            e.state, e.steps = "pending", 0
        else:
            e.state = status.state.value if status.final else "running"
            e.steps = status.steps

    # --- summary --------------------------------------------------------------------------------
    def print_summary(self) -> None:
        rows = [
            [e.run.name, e.state, f"{e.steps:,}", _short(e.error or _fidelity_note(e))]
            for e in self.entries
        ]
        print()
        _print_table(["run", "state", "steps", "error"], rows)
        counts = _count(self.entries)
        print(f"\n{self.spec.name}: {_counts_text(counts)} -> {self.out / 'sweep.json'}")
        failed = [e for e in self.entries if e.state == "failed"]
        stuck = [e for e in failed if e.note in NOT_RETRYABLE]
        if len(failed) > len(stuck):
            print(
                f"{len(failed) - len(stuck)} run(s) failed (see <run>/train.log); rerun them "
                f"with `kfac-bench sweep {self.spec.path} --retry-failed`",
                file=sys.stderr,
            )
        if stuck:
            print(
                f"{len(stuck)} run(s) not started: their directory holds another config or "
                "cannot be read (see the error column); --retry-failed does not change that",
                file=sys.stderr,
            )


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


# ---------------------------------------------------------------------------------------------
# small helpers


def _status_or_none(run_dir: Path) -> store.RunStatus | None:
    """The run's status, or None when it has none or it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        return store.read_status(run_dir)
    return None


def json_safe(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))


def _count(entries: list[Entry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.state] = counts.get(e.state, 0) + 1
    return counts


def _counts_text(counts: dict[str, int]) -> str:
    order = ("done", "diverged", "failed", "running", "pending")
    return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))


def _fidelity_note(e: Entry) -> str:
    if e.fidelity and e.fidelity.get("error"):
        return f"fidelity: {e.fidelity['error']}"
    return ""


def _short(text: str, width: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _si(value: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


__all__ = [
    "Entry",
    "Task",
    "add_arguments",
    "available_cores",
    "execute",
    "inspect_run",
    "run",
]
