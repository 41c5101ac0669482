"""The worker side of a sweep: one run in a spawned process or a Ray task.

:func:`execute` takes the run's lock (:class:`kfac_bench.store.RunLock`, re-entrant, so the
trainer's own lock inside it is the same one), points fds 1 and 2 at ``<run>/train.log``, trains
(start, resume or skip: :func:`kfac_bench.rl.trainer.train`) and, for a finished ACKTR run of a
``fidelity = true`` spec, runs :mod:`kfac_bench.fidelity`. It reports through ``send``:
``("progress", name, steps, fps, recent_return, episodes)`` at most every
``PROGRESS_INTERVAL_S``, and returns the result ``{"state": done|diverged|failed|interrupted|
locked, "steps", "error"[, "fidelity"|"holder"]}``. A worker whose sweep is gone (its parent pid
changed, or the pipe broke) stops at its next update, resumable (:class:`Orphaned`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kfac_bench import store
from kfac_bench.config import RunConfig
from kfac_bench.store import RunLock
from kfac_bench.sweep.plan import FIDELITY_MISSING, status_or_none

PROGRESS_INTERVAL_S = 0.5


class Orphaned(BaseException):
    """The sweep that started this worker is gone: stop now (resumable), write nothing more."""


@dataclass(frozen=True)
class Task:
    """What a worker needs to run one run (picklable: it crosses to a process or a Ray task)."""

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


def error_line(error: BaseException) -> str:
    """``TypeName: first line of the message`` (the error column of the summary)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def now() -> str:
    """UTC time stamp for ``train.log`` and ``sweep.json`` (never part of a run name)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_fidelity(run_dir: Path) -> dict[str, Any]:
    """Run :mod:`kfac_bench.fidelity` on a finished run: ``{"state": done|failed, "error"}``."""
    try:
        fidelity = importlib.import_module("kfac_bench.fidelity")
    except ModuleNotFoundError as error:
        if error.name in ("kfac_bench.fidelity", "kfac_bench"):
            return {"state": "failed", "error": FIDELITY_MISSING}
        traceback.print_exc()
        return {"state": "failed", "error": error_line(error)}
    try:
        fidelity.run_for_run_dir(run_dir)
    except Exception as error:
        traceback.print_exc()
        return {"state": "failed", "error": error_line(error)}
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
                f"=== {now()} sweep {task.sweep!r}: {task.name} (pid {os.getpid()}, "
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
        t = time.monotonic()
        if t - last[0] >= PROGRESS_INTERVAL_S or p.steps >= p.total_steps:
            last[0] = t
            try:
                send(("progress", task.name, p.steps, p.fps, p.recent_return, p.episodes))
            except (BrokenPipeError, EOFError, ConnectionError) as error:
                raise Orphaned(f"lost the sweep ({error})") from error

    try:
        result = train(task.config, run_dir, axes=task.axes, on_progress=on_progress)
    except (KeyboardInterrupt, Orphaned) as error:
        print(
            f"=== {now()} stopped ({type(error).__name__}); resumable from the last checkpoint",
            flush=True,
        )
        return {"state": "interrupted", "steps": _status_steps(run_dir), "error": None}
    except Exception as error:
        traceback.print_exc()
        message = error_line(error)
        if not isinstance(error, store.RunDirError):  # a damaged/foreign directory stays as is
            store.mark_failed(run_dir, message, require_config=False)
        print(f"=== {now()} failed: {message}", flush=True)
        return {"state": "failed", "steps": _status_steps(run_dir), "error": message}
    state = result.state.removeprefix("already-")
    print(
        f"=== {now()} {result.state} at {result.steps:,} steps"
        + (f": {result.error}" if result.error else ""),
        flush=True,
    )
    out: dict[str, Any] = {"state": state, "steps": result.steps, "error": result.error}
    if task.fidelity and task.config.optim.algo == "acktr" and state == "done":
        out["fidelity"] = run_fidelity(run_dir)
        print(f"=== {now()} fidelity: {out['fidelity']}", flush=True)
    return out


def _status_steps(run_dir: Path) -> int:
    status = status_or_none(run_dir)
    return status.steps if status is not None else 0


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


def local_worker(task: Task, conn, parent_pid: int) -> None:
    """Entry point of a spawned worker process: one run, then exit."""
    result: dict[str, Any]
    try:
        _die_with_parent(parent_pid)
        result = execute(task, conn.send, parent_pid)
    except (KeyboardInterrupt, Orphaned):
        result = {"state": "interrupted", "steps": 0, "error": None}
    except Exception as error:  # outside the trainer: lock, log file, imports
        traceback.print_exc()
        result = {"state": "failed", "steps": 0, "error": error_line(error)}
    with contextlib.suppress(Exception):
        conn.send(("result", task.name, result))
    with contextlib.suppress(Exception):
        conn.close()


def ray_worker(task: Task, queue) -> dict[str, Any]:
    """Body of a Ray task (progress through a ``ray.util.queue.Queue``)."""

    def send(message: tuple) -> None:
        with contextlib.suppress(Exception):
            queue.put_nowait(message)

    try:
        return execute(task, send, None)
    except KeyboardInterrupt:
        return {"state": "interrupted", "steps": 0, "error": None}
