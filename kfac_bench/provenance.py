"""Provenance recorded in every run's ``config.json``: git commit, versions, host, device."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def cpuinfo_field(name: str) -> str:
    """The first ``name`` line of ``/proc/cpuinfo`` (``vendor_id``, ``model name``, ...), or ''
    where there is none (not Linux, not x86)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


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
