"""Writing the report: every file atomically, the whole output directory staged.

:func:`staged_directory` gives the report a hidden sibling directory
``.<out-name>.partial-<pid>-<random>`` on the same file system; only when every file has been
written there are the files moved into ``out`` (``os.replace``, no data copied). A failure part
way (a full disk, a read-only directory, a bug) removes the staging directory and leaves
``out`` as it was: no empty ``report/figures/``, no half-written report. The error is an
``OSError`` naming the file's final path with the action ``write``, which the command line
prints as one line: ``kfac-bench: error: cannot write runs/x/report/figures/a.png: no space
left on device``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots
from kfac_bench.atomic import naming, write_atomic

FILE_MODE = 0o644  # report files are meant to be read by others
FIGURE_FORMATS = ("png", "svg")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`kfac_bench.atomic.write_atomic`)."""
    write_atomic(path, data, mode=FILE_MODE)


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV (no index) atomically."""
    write_text(path, frame.to_csv(index=False))


def save_figure(fig: Any, directory: Path, name: str) -> Path:
    """Save ``fig`` as ``name.png`` and ``name.svg``, close it; return the PNG path."""
    try:
        for ext in FIGURE_FORMATS:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=ext, dpi=110)
            write_bytes(directory / f"{name}.{ext}", buffer.getvalue())
    finally:
        plots.close(fig)
    return directory / f"{name}.png"


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_stale_stages(parent: Path, name: str) -> None:
    """Remove ``.<name>.partial-<pid>-*`` directories of processes that no longer run."""
    for stage in parent.glob(f".{name}.partial-*"):
        pid = stage.name.rsplit(".partial-", 1)[-1].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stage, ignore_errors=True)
        except OSError:
            continue


def _publish(stage: Path, out: Path) -> None:
    """Move every file of ``stage`` into ``out`` (directories first); drop stale figures."""
    previous_report = (out / "report.md").is_file()
    out.mkdir(exist_ok=True)
    written: set[Path] = set()
    for path in sorted(stage.rglob("*")):
        target = out / path.relative_to(stage)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            os.replace(path, target)
            written.add(target)
    figures = out / "figures"
    if previous_report and figures.is_dir():
        for old in figures.iterdir():
            if old.suffix.lstrip(".") in FIGURE_FORMATS and old not in written:
                old.unlink()


def _final_path(error: OSError, stage: Path, out: Path) -> OSError:
    """The same error, about the file's path under ``out`` instead of the staging directory."""
    filename = Path(str(error.filename)) if error.filename is not None else None
    if filename is not None and filename.is_relative_to(stage):
        filename = out / filename.relative_to(stage)
    return naming(error, filename or out, getattr(error, "action", "write"))


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on a clean exit its files replace those in ``out``.

    Raises ``NotADirectoryError`` (named, action ``write``) when ``out`` or its nearest existing
    ancestor is a file, and on any
    failure removes the staging directory and every directory this call created.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise naming(OSError(errno.ENOTDIR, "Not a directory"), out, "write")
    created = _missing_ancestors(out)
    existing = created[-1].parent if created else out
    if not existing.is_dir():
        raise naming(OSError(errno.ENOTDIR, "Not a directory"), existing, "write")
    stage: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_stages(out.parent, out.name)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        yield stage
        _publish(stage, out)
    except BaseException as error:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        _undo(created)
        if isinstance(error, OSError):
            raise _final_path(error, stage or out, out) from error
        raise
    shutil.rmtree(stage, ignore_errors=True)


def _undo(created: list[Path]) -> None:
    """Remove the directories this run created (deepest first), with whatever they hold."""
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
        for path in created[1:]:
            with contextlib.suppress(OSError):
                path.rmdir()
