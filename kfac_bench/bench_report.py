"""``make bench``: run the pytest-benchmark suite (tests/benchmarks/) and render its report.

    python -m kfac_bench.bench_report run [--device cpu|cuda] [--out runs/bench] [-- PYTEST_ARGS]
    python -m kfac_bench.bench_report render runs/bench/<commit>-<machine>.json [--out DIR]

``run`` writes ``runs/bench/<commit>-<machine>.json`` (commit = ``git rev-parse --short HEAD``,
``-dirty`` when tracked files changed; machine = host name slug), then renders
``runs/bench/report.md`` and ``runs/bench/report.png`` from it. The report records the torch build
(BLAS, threads), the CPU model, the GPU name under ``--device cuda``, the load average, and:

* each factor statistic (variant × layer) against the bare ``XᵀX`` product of the same shapes,
  timed in the same rounds (target ≤ 1.5×), with FLOP counts;
* bare GEMM vs SYRK throughput, the decompositions (eigh, Cholesky + solve, explicit inverse) per
  size and dtype, and each network's inverse per ``kfac.damping_mode``;
* the ACKTR/A2C update ratio over a cycle of ``inverse_every`` updates (target ≤ 1.25, aim 1.10:
  Wu et al. 2017 report 10–25 % more time per update than A2C) for the default and :data:`FAST`
  settings, and the trainer's env-steps/s ratio on MinAtar Breakout (target ≥ 0.8).

Targets are reported, never asserted: timings on a shared 2-core machine are noisy, which is why
every ratio is measured within one benchmark (interleaved rounds), not across benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kfac_bench import store
from kfac_bench.bench_render import headline, load, render
from kfac_bench.bench_settings import FAST, FAST_TIKHONOV_PI, SETTINGS, TARGETS
from kfac_bench.provenance import cpuinfo_field

__all__ = [
    "FAST",
    "FAST_TIKHONOV_PI",
    "SETTINGS",
    "TARGETS",
    "environment",
    "headline",
    "load",
    "main",
    "render",
    "run",
]

REPO = Path(__file__).resolve().parent.parent
DEVICE_ENV = "KFAC_BENCH_DEVICE"


# ---------------------------------------------------------------------------------------------
# provenance


def environment(device: str = "cpu") -> dict[str, Any]:
    """Torch build, BLAS, threads, CPU model, GPU name and load: what the timings depend on."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_config": torch.__config__.show(),
        "torch_parallel": torch.__config__.parallel_info(),
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "python": platform.python_version(),
        "device": device,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import numpy
        import scipy

        info["numpy"] = numpy.__version__
        info["scipy"] = scipy.__version__
        blas = scipy.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        info["scipy_blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception as error:  # informational only
        info["scipy_blas"] = f"unknown ({type(error).__name__})"
    from kfac_bench.curvature import syrk

    choice = syrk.kernel_choice()
    why = "by CPU vendor" if choice == "auto" else f"{syrk.KERNEL_ENV}={choice}"
    if not syrk.available():
        info["syrk"] = "none (blocked product)"
    elif syrk.preferred():
        info["syrk"] = f"MKL via libtorch_cpu ({why})"
    else:
        info["syrk"] = f"blocked product (MKL syrk present; {why}: {syrk.cpu_vendor()})"
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()


def commit_slug() -> str:
    """``git rev-parse --short HEAD`` plus ``-dirty`` when tracked files differ from HEAD."""
    commit = _git("rev-parse", "--short", "HEAD") or "nogit"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return f"{commit}-dirty" if dirty else commit


def machine_slug() -> str:
    return re.sub(r"[^a-z0-9]+", "-", platform.node().lower()).strip("-") or "machine"


# ---------------------------------------------------------------------------------------------
# run


def run(device: str, out: Path, pytest_args: list[str]) -> int:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("bench_report: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{commit_slug()}-{machine_slug()}.json"
    command = [
        sys.executable, "-m", "pytest", "tests/benchmarks", "--benchmark-only",
        f"--benchmark-json={json_path}", "-q", "-p", "no:cacheprovider", *pytest_args,
    ]  # fmt: skip
    env = {**os.environ, DEVICE_ENV: device}
    print("bench_report:", " ".join(command), flush=True)
    start = time.perf_counter()
    load_start = list(os.getloadavg())
    code = subprocess.call(command, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    if not json_path.exists():
        print(f"bench_report: pytest exited {code} without writing {json_path}", file=sys.stderr)
        return code or 1
    data = json.loads(json_path.read_text())
    data["kfac_bench_suite"] = {
        "wall_s": wall,
        "pytest_exit_code": code,
        "command": command,
        "device": device,
        "loadavg_start": load_start,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    store.write_atomic(json_path, json.dumps(data, indent=1).encode())
    report = render(json_path, out)
    print(f"bench_report: {json_path} ({wall / 60:.1f} min, pytest exit {code}) -> {report}")
    return code


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kfac_bench.bench_report", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run tests/benchmarks and render the report")
    p_run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p_run.add_argument("--out", type=Path, default=REPO / "runs" / "bench")
    p_run.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest")
    p_render = sub.add_parser("render", help="render report.md/report.png from a benchmark JSON")
    p_render.add_argument("json", type=Path)
    p_render.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "run":
        extra = [a for a in args.pytest_args if a != "--"]
        return run(args.device, args.out, extra)
    report = render(args.json, args.out)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
