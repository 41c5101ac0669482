"""Where the runs execute: local spawned processes, or Ray tasks.

A backend has ``capacity`` (runs at a time), ``start(task)``, ``poll(timeout) -> events``,
``running() -> names``, ``interrupt(force=False)`` and ``close()``. Events are tuples
``("progress", name, steps, fps, recent_return, episodes)``, ``("result", name, result)`` (what
:func:`kfac_bench.sweep.worker.execute` returned) and ``("died", name, reason)`` for a worker that
ended without a result (killed, out of memory, a lost Ray task).

* :class:`LocalBackend`: each run is one process of the ``multiprocessing`` spawn context, with
  a one-way pipe for its messages and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to its share
  of the cores.
* :class:`RayBackend` (``pip install 'kfac-bench[ray]'``): the same runs as Ray tasks on a local
  instance or the cluster at ``address`` / ``$RAY_ADDRESS``; progress through a
  ``ray.util.queue.Queue``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from multiprocessing.connection import wait as wait_connections
from typing import Any

from kfac_bench.sweep.worker import Task, error_line, local_worker, ray_worker


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
            target=local_worker,
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
    """Ray tasks on a local instance or a cluster; progress through a Ray queue.

    ``workers`` caps the runs at a time (None: as many as the cluster fits); each task asks for
    ``cpus_per_run`` CPUs (default ``threads``) and ``gpus_per_run`` GPUs."""

    def __init__(
        self,
        workers: int | None,
        threads: int,
        *,
        address: str | None = None,
        cpus_per_run: float | None = None,
        gpus_per_run: float = 0.0,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError(
                "--backend ray needs the ray extra: pip install 'kfac-bench[ray]'"
            ) from None
        import logging

        from ray.util.queue import Queue

        self.ray = ray
        address = address or os.environ.get("RAY_ADDRESS")
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
        cpus = cpus_per_run if cpus_per_run is not None else threads
        self.remote = ray.remote(ray_worker).options(
            num_cpus=cpus, num_gpus=gpus_per_run or 0, max_retries=0
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
                events.append(("result", name, {"state": "failed", "error": error_line(cause)}))
            except ray.exceptions.RayError as error:
                events.append(("died", name, f"Ray task lost: {error_line(error)}"))
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
