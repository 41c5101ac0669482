"""The run directory contract (DESIGN.md §5) and atomic file writes.

    runs/<sweep>/<label>__<env-slug>__s<seed>[__<axis>-<value>...]/
      config.json    label, variant, env, seed, preset, axes, the resolved config, provenance
      episodes.csv   step, wall_time, return, length        (append-only, flushed per update)
      updates.csv    step, wall_time, update, fps, policy_loss, ... (append-only, flushed)
      status.json    {"state": running|done|failed|diverged, "steps", "error", "wall_time"}
      checkpoint.pt  latest resumable state (atomic: temp file + rename)

A kill at any moment leaves readable files; on resume the CSVs are cut back to the checkpoint's
step so rows are never duplicated. Run names never contain timestamps.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
    "predicted_kl_total",  # the same quadratic model over all preconditioned parameters
    "trust_q",  # the trust region's q = Σ⟨F̃⁻¹g, g⟩ that set ν (ν = min(1, sqrt(δ/(lr²·q))))
    "clip_fraction",  # PPO: fraction of ratios outside [1−ε, 1+ε] over the last epoch
]
STATES = ("running", "done", "failed", "diverged")


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


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    The file gets ``mode``, or by default the ordinary permissions (0666 minus the umask;
    mkstemp alone would leave 0600). The one atomic-write mechanism of the project."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK if mode is None else mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_torch(path: Path, obj: Any) -> None:
    """torch.save through :func:`write_atomic` (a kill never leaves a torn checkpoint)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only, no arbitrary pickle."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot load checkpoint {path}: {str(error).splitlines()[0]}") from error


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
                raise ValueError(
                    f"{path} was written with other columns than this version writes "
                    f"({len(header)} vs {len(columns)}); resume it with the version that "
                    "started it, or use another --out directory"
                )
        self.handle = path.open("a", newline="")
        self.writer = csv.writer(self.handle)
        if fresh:
            self.writer.writerow(columns)
            self.handle.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.writer.writerow([_fmt(row.get(c)) for c in self.columns])
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def truncate_csv(path: Path, max_step: int) -> int:
    """Keep the header and rows with ``step ≤ max_step`` (atomic rewrite); returns rows kept."""
    if not path.exists():
        return 0
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and int(float(r[0])) <= max_step]
    text = io.StringIO()
    csv.writer(text).writerows([header, *kept])
    write_atomic(path, text.getvalue().encode())
    return len(kept)


def git_info() -> tuple[str, bool]:
    """(commit, dirty) of the source tree this package runs from; ("unknown", False) outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return "unknown", False
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def versions() -> dict[str, str]:
    from importlib import metadata

    import torch

    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("kfac-bench", "numpy", "gymnasium", "ale-py", "minatar"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def provenance(device: str) -> dict[str, Any]:
    import torch

    commit, dirty = git_info()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": versions(),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
