"""The per-run lock, and the clean-up that is only safe while holding it.

One process writes a run directory at a time: an exclusive ``fcntl.flock`` on ``<run>/.lock``
(which holds the writer's pid), released by the kernel when the holder dies, so a SIGKILL never
leaves a run locked. :func:`remove_stale_temps` deletes the temp files a kill inside
:func:`kfac_bench.atomic.write_atomic` leaves behind; a live writer's temp file looks the same,
hence the lock. Callers go through :mod:`kfac_bench.store`, which re-exports these names and
turns a held lock into :class:`kfac_bench.store.RunLockedError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from kfac_bench.atomic import naming

_HELD: dict[Path, list] = {}  # run dir -> [fd, depth]: this process's locks (re-entrant)


class RunLock:
    """Exclusive ``fcntl.flock`` on ``<run>/.lock``, released by the kernel if the holder dies.

    Re-entrant within one process (the sweep worker holds it around ``train``, which takes it
    too). ``acquire`` creates the run directory if needed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / ".lock"
        self.held = False

    def acquire(self) -> int | None:
        """Take the lock without waiting; None on success, else the holder's pid (0: unknown)."""
        if self.held:
            return None
        if self.run_dir in _HELD:
            _HELD[self.run_dir][1] += 1
            self.held = True
            return None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise naming(error, self.path, "create") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[self.run_dir] = [fd, 1]
        self.held = True
        return None

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        slot = _HELD[self.run_dir]
        slot[1] -= 1
        if slot[1] == 0:
            del _HELD[self.run_dir]
            with contextlib.suppress(OSError):
                fcntl.flock(slot[0], fcntl.LOCK_UN)
            os.close(slot[0])


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


def lock_holder(run_dir: Path) -> int | None:
    """Pid holding ``<run>/.lock`` (0 when unknown), or None when it is free. Creates nothing."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        return os.getpid()
    try:
        fd = os.open(run_dir / ".lock", os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def remove_stale_temps(run_dir: Path) -> list[str]:
    """Delete the ``.<name>.*.tmp`` files a kill during :func:`write_atomic` leaves behind.

    Call only while holding the run's lock (a live writer's temp file looks the same)."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)
