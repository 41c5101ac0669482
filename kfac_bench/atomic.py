"""Atomic file writes: the one mechanism every file that matters goes through.

A reader (or a process killed mid-write and started again) sees either the old file or the new
one, never a torn one. A kill leaves at most a ``.<name>.<random>.tmp`` beside the target, which
:func:`kfac_bench.store.remove_stale_temps` deletes under the run's lock.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    The file gets ``mode``, or by default the ordinary permissions (0666 minus the umask;
    mkstemp alone would leave 0600). The one atomic-write mechanism of the project."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise naming(error, path, "write") from error
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK if mode is None else mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise naming(error, path, "write") from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def naming(error: OSError, path: Path, action: str) -> OSError:
    """The same OSError (same subclass, errno) about ``path`` (not a temp file), with ``action``
    (``write``, ``create``, ``read``) for the command line's one-line message."""
    named = OSError(error.errno, error.strerror, str(path))
    named.action = action  # type: ignore[attr-defined]
    return named


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_torch(path: Path, obj: Any) -> None:
    """torch.save through :func:`write_atomic` (a kill never leaves a torn checkpoint)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())
