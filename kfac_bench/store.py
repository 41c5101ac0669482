"""The run directory contract (DESIGN.md §5): its one owner; nothing else writes or parses it.

    runs/<sweep>/<label>__<env-slug>__s<seed>[__<axis>-<value>...]/
      config.json    label, variant, env, seed, preset, axes, the resolved config, provenance
      episodes.csv   step, wall_time, return, length        (append-only, flushed per update)
      updates.csv    step, wall_time, update, fps, policy_loss, ... (append-only, flushed)
      status.json    {"state": running|done|failed|diverged, "steps", "error", "wall_time"}
      checkpoint.pt  latest resumable state (atomic: temp file + rename)
      .lock          the per-run lock (``fcntl.flock``; holds the writer's pid)

Guarantees: exactly one process writes a run directory at a time (:class:`RunLock`, taken by
``train`` through :func:`claimed` and by the sweep's workers). config.json, status.json and
checkpoint.pt are replaced atomically (:mod:`kfac_bench.atomic`), the CSVs are append-only with
flushed rows, so a kill at any moment leaves readable files; on resume stale temp files are
removed, a torn last CSV row is dropped and the CSVs are cut back to the checkpoint's step, so
rows are never lost before the checkpoint nor duplicated. A damaged file is a :class:`RunDirError` whose one line names the file
and what to do. Run names never contain timestamps.

Callers go through this module only; the lock and stale temp clean-up
(:mod:`kfac_bench.run_lock`) and the atomic writes (:mod:`kfac_bench.atomic`) are re-exported.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from kfac_bench import config as config_mod
from kfac_bench import timing
from kfac_bench.atomic import naming, save_torch, write_atomic, write_json  # noqa: F401  (re-exported)
from kfac_bench.run_lock import RunLock, lock_holder, remove_stale_temps  # noqa: F401  (re-exported)

EPISODE_COLUMNS = ["step", "wall_time", "return", "length"]
UPDATE_COLUMNS = [
    "step",
    "wall_time",
    "update",
    "fps",
    "policy_loss",
    "value_loss",
    "entropy",
    "kl",  # measured policy KL(π_old ‖ π_new) on the batch, for the step actually applied
    "predicted_kl",  # ½ΔθᵀF̃Δθ of the applied Δθ (momentum included), policy parameters only
    "nu",
    "lr",
    "grad_norm",
    "inverse_staleness",  # K-FAC: updates between the decomposition's statistics and this step
    "stats_staleness",  # K-FAC: Fisher batches not yet in the factors it used (pipelined: 1)
    "predicted_kl_total",  # the same quadratic model over all preconditioned parameters
    "trust_q",  # the trust region's q = Σ⟨F̃⁻¹g, g⟩ that set ν (ν = min(1, sqrt(δ/(lr²·q))))
    "clip_fraction",  # PPO: fraction of ratios outside [1−ε, 1+ε] over the last epoch
    *timing.COLUMNS,  # seconds per phase since the previous row (kfac_bench/timing.py)
]


def env_slug(env_id: str) -> str:
    """``MinAtar/Breakout-v1`` -> ``MinAtar-Breakout-v1`` (safe in a directory name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", env_id).strip("-")


def value_slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def run_name(label: str, env_id: str, seed: int, axes: dict[str, Any] | None = None) -> str:
    """``<label>__<env-slug>__s<seed>[__<axis>-<value>...]``; axis keys keep their last part."""
    parts = [label, env_slug(env_id), f"s{seed}"]
    for key, value in (axes or {}).items():
        parts.append(f"{key.split('.')[-1]}-{value_slug(value)}")
    return "__".join(parts)


def read_json(path: Path) -> Any:
    """Parse a JSON file; a damaged one is a :class:`RunDirError` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except UnicodeDecodeError as error:
        raise RunDirError(path, f"is not UTF-8 text ({error.reason})", _DAMAGED) from None
    except json.JSONDecodeError as error:
        raise RunDirError(path, f"is not valid JSON ({error})", _DAMAGED) from None


def load_checkpoint(path: Path) -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only, no arbitrary pickle."""
    import torch

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise RunDirError(path, "is empty", _RESTART)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:
        raise RunDirError(path, f"cannot be loaded ({_first_line(error)})", _RESTART) from None
    if not isinstance(state, dict):
        raise RunDirError(path, f"holds a {type(state).__name__}, not a checkpoint", _RESTART)
    return state


# ---------------------------------------------------------------------------------------------
# errors, status and config record


_DAMAGED = "it was changed outside kfac-bench; move the run directory away to start the run over"
_RESTART = "delete checkpoint.pt to restart the run from step 0, or move the run directory away"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RunDirError(ValueError):
    """A run directory's file is unreadable, damaged or belongs to another run.

    The message names the file, what is wrong with it and what to do:
    ``runs/x/status.json is not valid JSON (...); it was changed outside kfac-bench; ...``."""

    def __init__(self, path: Path | str, problem: str, action: str) -> None:
        self.path, self.problem, self.action = Path(path), problem, action
        super().__init__(f"{self.path} {problem}; {action}")


class RunLockedError(RunDirError):
    """Another process holds the run directory's lock."""

    def __init__(self, run_dir: Path, holder: int) -> None:
        self.holder = holder
        super().__init__(
            Path(run_dir),
            f"is in use by another kfac-bench process (pid {holder or 'unknown'})",
            "wait for it to finish, or choose another --out directory",
        )


class RunState(str, Enum):
    """``status.json`` ``state``."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DIVERGED = "diverged"


FINAL_STATES = frozenset({RunState.DONE, RunState.DIVERGED})  # results: never rerun
STATES = tuple(s.value for s in RunState)


@dataclass(frozen=True)
class RunStatus:
    """``status.json``: ``{"state", "steps", "error", "wall_time"}``."""

    state: RunState
    steps: int = 0
    error: str | None = None
    wall_time: float = 0.0

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "steps": int(self.steps),
            "error": self.error,
            "wall_time": round(float(self.wall_time), 3),
        }

    @classmethod
    def from_dict(cls, obj: Any, path: Path) -> RunStatus:
        """Validate a parsed ``status.json``; anything off is a :class:`RunDirError`."""
        if not isinstance(obj, dict):
            raise RunDirError(path, f"holds a JSON {type(obj).__name__}, not an object", _DAMAGED)
        state, steps = obj.get("state"), obj.get("steps", 0)
        if state not in STATES:
            raise RunDirError(
                path, f"has state {state!r}, not one of {', '.join(STATES)}", _DAMAGED
            )
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise RunDirError(path, f"has steps {steps!r}, not an integer >= 0", _DAMAGED)
        error, wall = obj.get("error"), obj.get("wall_time", 0.0)
        if error is not None and not isinstance(error, str):
            raise RunDirError(path, f"has error {error!r}, not a string or null", _DAMAGED)
        if not isinstance(wall, (int, float)) or isinstance(wall, bool):
            raise RunDirError(path, f"has wall_time {wall!r}, not a number", _DAMAGED)
        return cls(RunState(state), steps, error, float(wall))


def read_status(run_dir: Path) -> RunStatus | None:
    """The run's status; None when it has no ``status.json`` (never started)."""
    path = Path(run_dir) / "status.json"
    if not path.exists():
        return None
    return RunStatus.from_dict(read_json(path), path)


def write_status(run_dir: Path, status: RunStatus) -> None:
    write_json(Path(run_dir) / "status.json", status.to_dict())


def read_config_record(run_dir: Path) -> dict[str, Any]:
    """``config.json`` (label, variant, env, seed, preset, axes, config, provenance).

    A missing, unparsable or malformed file (no ``config`` object) is a :class:`RunDirError`."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise RunDirError(path, "is missing", "this is not a complete run directory")
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunDirError(path, 'has no "config" object (not a run\'s config.json)', _DAMAGED)
    return record


def config_drift(run_dir: Path, config: Any) -> list[str]:
    """``key: saved -> wanted`` for every setting where ``config.json`` differs from ``config``.

    Empty when they agree or the directory has no ``config.json`` yet (a fresh run)."""

    if not (Path(run_dir) / "config.json").exists():
        return []
    return config_differences(read_config_record(run_dir)["config"], config)


def drift_error(run_dir: Path, diffs: list[str], action: str | None = None) -> RunDirError:
    """The one message for a run directory that holds a run with another config."""
    shown = "; ".join(diffs[:3]) + (f"; ... {len(diffs) - 3} more" if len(diffs) > 3 else "")
    return RunDirError(
        Path(run_dir) / "config.json",
        f"holds a run with a different config ({shown})",
        action
        or "restore the settings it was started with, or choose another --out directory "
        "(or move the run directory away to start over)",
    )


# ---------------------------------------------------------------------------------------------
# claiming a run directory (the lock itself: kfac_bench.run_lock)


def check_run_dir(run_dir: Path, config: Any) -> RunStatus | None:
    """Read-only check before a run starts or resumes: the saved config must match, then the
    status must be readable. Returns the status (None: never started); raises RunDirError."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(run_dir, "is a file, not a run directory", "choose another --out")
    diffs = config_drift(run_dir, config)
    if diffs:
        raise drift_error(run_dir, diffs)
    return read_status(run_dir)


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Create (if needed) and lock ``run_dir`` for this process (RunLockedError if taken).

    If the body raises before ``config.json`` exists, the directories created here are removed
    again: bad input or a failed first write leaves nothing behind."""
    run_dir = Path(run_dir).absolute()
    created = next((p for p in [*reversed(run_dir.parents), run_dir] if not p.exists()), None)
    lock = RunLock(run_dir)
    try:
        holder = lock.acquire()
        if holder is not None:
            raise RunLockedError(lock.run_dir, holder)
        yield
    except BaseException:
        if created is not None and not (run_dir / "config.json").exists():
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        lock.release()


def begin(run_dir: Path, record: dict[str, Any]) -> dict | None:
    """Under the lock: remove stale temp files, then resume or start the run.

    With a checkpoint: cut both CSVs back to its step (dropping a torn last row) and return
    its state. Without: delete stale CSVs, write ``config.json`` and return None."""
    run_dir = Path(run_dir)
    remove_stale_temps(run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        for name in ("episodes.csv", "updates.csv"):
            truncate_csv(run_dir / name, int(state.get("steps", 0)))
        return state
    for name in ("episodes.csv", "updates.csv"):
        (run_dir / name).unlink(missing_ok=True)
    write_json(run_dir / "config.json", record)
    return None


def mark_failed(
    run_dir: Path, error: str, steps: int | None = None, *, require_config: bool = True
) -> bool:
    """Record ``failed`` in a run directory this process holds, unless its status is final or
    (``require_config``) it has no config.json, so nothing of the run was written. The sweep
    passes ``require_config=False`` so a run that fails before its first write is not rerun
    without ``--retry-failed``. Never raises; True when written."""
    try:
        if require_config and not (Path(run_dir) / "config.json").exists():
            return False
        old = read_status(run_dir)
        if old is not None and (old.final or old.state is RunState.FAILED):
            return False
        prior_steps = old.steps if old is not None else 0
        wall = old.wall_time if old is not None else 0.0
        write_status(run_dir, RunStatus(RunState.FAILED, steps or prior_steps, error, wall))
        return True
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# CSV logs


class CsvLog:
    """Append-only CSV with a fixed header; each ``write`` flushes, so a kill loses nothing."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        fresh = not path.exists() or path.stat().st_size == 0
        if not fresh:
            with path.open(newline="") as handle:
                header = next(csv.reader(handle), [])
            if header != columns:
                raise RunDirError(
                    path,
                    f"was written with other columns than this version writes "
                    f"({len(header)} vs {len(columns)})",
                    "resume it with the version that started it, or use another --out directory",
                )
        self.handle = path.open("a", newline="")
        self.writer = csv.writer(self.handle)
        if fresh:
            self.writer.writerow(columns)
            self.handle.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        try:
            for row in rows:
                self.writer.writerow([_fmt(row.get(c)) for c in self.columns])
            self.handle.flush()
        except OSError as error:
            raise naming(error, self.path, "write") from error

    def close(self) -> None:
        self.handle.close()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def truncate_csv(path: Path, max_step: int) -> int:
    """Cut a log back to the checkpoint: keep the header and rows with ``step <= max_step``.

    A torn last row (no line end: a kill or a full disk inside a write) is dropped first.
    Any other row that does not parse (wrong field count, non-numeric step) is a
    :class:`RunDirError` naming the file and line. Atomic rewrite; returns the rows kept."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]  # the torn tail (all of it if there is no line end)
    try:
        rows = list(csv.reader(io.StringIO(data.decode())))
    except (UnicodeDecodeError, csv.Error) as error:
        raise RunDirError(path, f"is not a readable CSV ({_first_line(error)})", _DAMAGED) from None
    if not rows:
        return 0
    header, kept = rows[0], []
    for line, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields, the header has {len(header)}")
            step = int(float(row[0]))
        except ValueError as error:
            raise RunDirError(path, f"line {line} is garbled ({error})", _DAMAGED) from None
        if step <= max_step:
            kept.append(row)
    text = io.StringIO()
    csv.writer(text).writerows([header, *kept])
    write_atomic(path, text.getvalue().encode())
    return len(kept)


# Settings that do not change what a run computes, so a resumed run may differ in them.
RESUME_INDEPENDENT = frozenset({"torch_threads", "log.tensorboard", "log.wandb"})


def config_differences(saved: dict[str, Any], config: config_mod.RunConfig) -> list[str]:
    """``key: saved -> wanted`` for every setting where a run directory's config.json differs.

    Keys missing from ``saved`` (fields added to the code since the run started) count as their
    dataclass default, which by convention keeps the old behaviour.
    """
    defaults = config_mod.flatten(config_mod.to_dict(config_mod.RunConfig(env=config.env)))
    old, new = config_mod.flatten(saved), config_mod.flatten(config_mod.to_dict(config))
    missing = "(missing)"
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_INDEPENDENT:
            continue
        before = old.get(key, defaults.get(key, missing))
        after = new.get(key, missing)
        if before != after:
            diffs.append(f"{key}: {before!r} -> {after!r}")
    return diffs
