"""The GPU path, proven in one go (``scripts/gpu-check.sh``; issue 15).

    scripts/gpu-check.sh [--device cuda|cpu] [--quick] [--out DIR] [--steps N]

Four checks, each on ``--device`` (default ``cuda``), then one JSON and one markdown summary
(``<out>/gpu-check.json``, ``<out>/gpu-check.md``; default out ``runs/gpu-check``):

1. **determinism** — the same ACKTR run (``openai-baselines`` preset, BreakoutNoFrameskip-v4,
   seed 0, a row every update) twice; every cell of ``updates.csv`` and ``episodes.csv`` but the
   clock columns (``wall_time``, ``fps``) and every parameter of the final checkpoint must be
   bitwise equal. On CUDA the pair runs twice more under ``torch.use_deterministic_algorithms``
   (with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``), so a difference can be told apart from
   nondeterministic kernels.
2. **throughput** — ``--steps`` env steps (default 1M) of the same setup; env-steps/s is steps
   over the run's own wall time (``status.json``).
3. **update cost** — the benchmark suite's ACKTR/A2C update ratio for the Nature CNN at B = 640
   (``tests/benchmarks/test_bench_update.py``, ``update-nature-b640-default``: synchronous
   inverse; ``-fast``: asynchronous), on the device (``KFAC_BENCH_DEVICE``).
4. **decompositions** — ``eigh`` vs Cholesky (+ solve) per factor size of the benchmark networks
   (``tests/benchmarks/test_bench_inverse.py::test_decomposition``).

``--quick`` (the CPU smoke test: ``scripts/gpu-check.sh --device cpu --quick``) runs the same code
with 640-step determinism runs, a 1,280-step throughput run, the update benchmark bodies once on
the suite's quick shapes (B = 16: the ratio there is no measurement) and the decompositions timed
for the sizes up to 513 only. Exit status: 0 when every check ran and the determinism pair (the
deterministic-algorithms pair on CUDA) is bitwise equal, 1 otherwise, 2 for bad arguments (one
line, nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before torch initialises cuBLAS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_report import compare_runs, decompositions, render, update_ratios  # noqa: E402

ENV = "BreakoutNoFrameskip-v4"
PRESET = "openai-baselines"
FULL = {"determinism_steps": 20_480, "throughput_steps": 1_000_000}
QUICK = {"determinism_steps": 640, "throughput_steps": 1_280}
QUICK_MAX_DECOMPOSITION = 513  # --quick times the decompositions up to this size


@dataclasses.dataclass(frozen=True)
class Options:
    device: str
    quick: bool
    out: Path
    determinism_steps: int
    throughput_steps: int


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (not argparse's usage block)
        print(f"gpu-check: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse(argv: list[str]) -> Options:
    parser = OneLineParser(prog="scripts/gpu-check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (the CPU smoke test)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    parser.add_argument("--steps", type=int, default=None, help="throughput run's env steps")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps: {args.steps} is not allowed (must be an integer >= 1)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file, not a directory")
    parent = next((p for p in [args.out, *args.out.parents] if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK):
        parser.error(f"--out {args.out}: {parent} is not writable")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error(
                "--device cuda: torch.cuda.is_available() is False (no GPU, or a CPU-only torch "
                "build); use --device cpu"
            )
    return Options(
        args.device,
        args.quick,
        args.out.absolute(),
        sizes["determinism_steps"],
        args.steps or sizes["throughput_steps"],
    )


# ---------------------------------------------------------------------------------------------
# the checks


def train_run(run_dir: Path, device: str, steps: int, sets: dict[str, Any]) -> dict[str, Any]:
    """One run of the setup through the trainer's real entry point; its budget and speed."""
    import shutil

    from kfac_bench import store
    from kfac_bench.presets import build_config
    from kfac_bench.rl.trainer import train

    shutil.rmtree(run_dir, ignore_errors=True)  # a check measures a fresh run, never a resume
    config = build_config(
        ENV, preset=PRESET, seed=0, total_steps=steps, overrides={"device": device, **sets}
    )
    result = train(config, run_dir)
    status = store.read_status(run_dir)
    returns = []
    if (run_dir / "episodes.csv").exists():
        import pandas as pd

        returns = pd.read_csv(run_dir / "episodes.csv")["return"].tolist()
    wall = float(status.wall_time or 0.0)
    return {
        "state": result.state,
        "steps": result.steps,
        "wall_s": round(wall, 2),
        "env_steps_per_s": round(result.steps / wall, 1) if wall > 0 else None,
        "episodes": len(returns),
        "last20_return": round(sum(returns[-20:]) / len(returns[-20:]), 2) if returns else None,
    }


def determinism(opts: Options) -> dict[str, Any]:
    import torch

    sets = {"log.update_every": 1, "log.checkpoint_every": 10_000}
    pairs = [("default", False)] + (
        [("deterministic-algorithms", True)] if opts.device == "cuda" else []
    )
    out: dict[str, Any] = {"steps": opts.determinism_steps, "pairs": {}}
    for name, strict in pairs:
        torch.use_deterministic_algorithms(strict)
        try:
            dirs = [opts.out / "determinism" / f"{name}-{i}" for i in (1, 2)]
            runs = [train_run(d, opts.device, opts.determinism_steps, sets) for d in dirs]
            out["pairs"][name] = {**compare_runs(*dirs), "wall_s": [r["wall_s"] for r in runs]}
        except Exception as error:  # e.g. an op without a deterministic kernel
            out["pairs"][name] = {"identical": False, "error": f"{type(error).__name__}: {error}"}
        finally:
            torch.use_deterministic_algorithms(False)
    decisive = "deterministic-algorithms" if opts.device == "cuda" else "default"
    out["passed"] = bool(out["pairs"][decisive].get("identical"))
    return out


def throughput(opts: Options) -> dict[str, Any]:
    return train_run(opts.out / "throughput", opts.device, opts.throughput_steps, {})


def run_benchmarks(opts: Options, target: str, keyword: str, enabled: bool, name: str) -> list:
    """The suite's tests matching ``keyword`` in a pytest subprocess; their captured results."""
    capture = opts.out / f"{name}.pytest.json"
    capture.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", target, "-k", keyword, "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "gpu_check_plugin", "-o", "addopts=", "--strict-markers"]
    cmd += [] if enabled else ["--benchmark-disable"]
    env = {
        **os.environ,
        "KFAC_BENCH_DEVICE": opts.device,
        "GPU_CHECK_CAPTURE": str(capture),
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), str(REPO), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    (opts.out / f"{name}.pytest.log").write_text(proc.stdout + proc.stderr)
    results = json.loads(capture.read_text()) if capture.exists() else []
    if not results:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        results = [{"nodeid": target, "outcome": "failed", "error": tail[0][:300]}]
    return results


def update_cost(opts: Options) -> list:
    return run_benchmarks(
        opts,
        "tests/benchmarks/test_bench_update.py::test_update_cycle",
        "update-nature-b640",
        enabled=not opts.quick,
        name="update",
    )


def quick_sizes() -> list[int]:
    """The suite's factor sizes from 64 to QUICK_MAX_DECOMPOSITION (its own SIZES list)."""
    sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
    import test_bench_inverse

    return [n for n in test_bench_inverse.SIZES if 64 <= n <= QUICK_MAX_DECOMPOSITION]


def decomposition_cost(opts: Options) -> list:
    keyword = "test_decomposition and (eigh or cholesky) and not torch-threads"
    if opts.quick:
        keyword += " and f32 and (" + " or ".join(f"-{n}-" for n in quick_sizes()) + ")"
    return run_benchmarks(
        opts, "tests/benchmarks/test_bench_inverse.py", keyword, enabled=True, name="decompositions"
    )


# ---------------------------------------------------------------------------------------------


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    from kfac_bench.bench_report import cpu_model

    return f"CPU: {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def main(argv: list[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    import torch

    from kfac_bench.provenance import provenance

    opts.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "device": opts.device,
        "device_name": device_name(opts.device),
        "quick": opts.quick,
        "env": ENV,
        "preset": PRESET,
        "torch": torch.__version__,
        "provenance": provenance(opts.device),
        "wall_s": {},
    }
    checks = [
        ("determinism", determinism),
        ("throughput", throughput),
        ("update_cost", update_cost),
        ("decompositions", decomposition_cost),
    ]
    for key, check in checks:
        print(f"gpu-check: {key} ...", flush=True)
        start = time.perf_counter()
        try:
            summary[key] = check(opts)
        except Exception as error:
            summary[key] = {"error": f"{type(error).__name__}: {error}"}
        summary["wall_s"][key] = round(time.perf_counter() - start, 1)
    summary["update_ratios"] = update_ratios(summary.get("update_cost"))
    summary["decomposition_table"] = decompositions(summary.get("decompositions"))
    problems = problems_of(summary)
    summary["passed"], summary["problems"] = not problems, problems
    (opts.out / "gpu-check.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (opts.out / "gpu-check.md").write_text(render(summary))
    print(f"gpu-check: wrote {opts.out / 'gpu-check.md'} and gpu-check.json")
    for problem in problems:
        print(f"gpu-check: FAILED: {problem}", file=sys.stderr)
    return 0 if not problems else 1


def problems_of(summary: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("determinism", "throughput", "update_cost", "decompositions"):
        value = summary.get(key)
        if isinstance(value, dict) and "error" in value:
            problems.append(f"{key}: {value['error']}")
    det = summary.get("determinism") or {}
    if "pairs" in det and not det.get("passed"):
        problems.append("determinism: the same seed gave different results (see gpu-check.md)")
    tp = summary.get("throughput") or {}
    if "state" in tp and tp["state"] != "done":
        problems.append(f"throughput: the run ended {tp['state']}")
    for key in ("update_cost", "decompositions"):
        entries = summary.get(key)
        for entry in entries if isinstance(entries, list) else []:
            if entry.get("outcome") != "passed":
                problems.append(
                    f"{key}: {entry['nodeid']} {entry.get('outcome')}: {entry.get('error', '')}"
                )
    return problems


if __name__ == "__main__":
    sys.exit(main())
