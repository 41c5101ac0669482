"""scripts/gpu-check.sh: the run comparison against hand-made runs, the tables and the markdown,
bad arguments (one line, exit 2, nothing written), and (slow) the whole script on the CPU path
with ``--device cpu --quick``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check.sh"
sys.path.insert(0, str(REPO / "scripts"))

from gpu_check_report import compare_runs, decompositions, render, update_ratios  # noqa: E402

UPDATES = "step,wall_time,fps,policy_loss,nu\n640,1.5,400.0,0.125,1.0\n1280,2.5,500.0,-0.25,0.5\n"
EPISODES = "step,wall_time,return,length\n700,1.6,3.0,120\n"


def make_run(path: Path, updates: str = UPDATES, episodes: str = EPISODES, bias: float = 0.0):
    path.mkdir(parents=True)
    (path / "updates.csv").write_text(updates)
    (path / "episodes.csv").write_text(episodes)
    policy = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([0.5, bias])}
    torch.save({"policy": policy}, path / "checkpoint.pt")
    return path


def test_identical_runs_differ_only_in_the_clock(tmp_path):
    a = make_run(tmp_path / "a")
    clock = UPDATES.replace("1.5,400.0", "9.0,1.0").replace("2.5,500.0", "3.0,2.0")
    b = make_run(tmp_path / "b", updates=clock, episodes=EPISODES.replace("1.6", "7.7"))
    result = compare_runs(a, b)
    assert result == {
        "identical": True,
        "rows": {"updates.csv": [2, 2], "episodes.csv": [1, 1]},
        "parameters": 2,
        "differing": {},
    }


def test_one_cell_one_parameter_and_a_missing_row_are_named(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(
        tmp_path / "b",
        updates=UPDATES.replace("-0.25", "-0.2500001"),
        episodes="step,wall_time,return,length\n",
        bias=2**-20,
    )
    result = compare_runs(a, b)
    assert not result["identical"]
    diff = result["differing"]
    assert set(diff) == {"updates.csv:policy_loss", "episodes.csv:rows", "param:b"}
    assert diff["updates.csv:policy_loss"] == pytest.approx(1e-7, rel=1e-6)
    assert diff["param:b"] == 2**-20 and math.isinf(diff["episodes.csv:rows"])


def test_a_run_without_rows_is_not_identical(tmp_path):
    header_only = "step,wall_time,fps,policy_loss,nu\n"
    a = make_run(tmp_path / "a", updates=header_only, episodes="step,wall_time,return,length\n")
    b = make_run(tmp_path / "b", updates=header_only, episodes="step,wall_time,return,length\n")
    assert compare_runs(a, b)["identical"] is False


CAPTURED_UPDATE = [
    {
        "nodeid": "x[update-nature-b640-default]",
        "outcome": "passed",
        "median_s": 1.0,
        "extra_info": {
            "kind": "update",
            "setting": "default",
            "batch": 640,
            "overrides": {},
            "acktr_mean_s": 0.03,
            "a2c_mean_s": 0.02,
            "ratio": 1.5,
        },
    },
    {
        "nodeid": "x[update-nature-b640-fast]",
        "outcome": "passed",
        "extra_info": {
            "kind": "update",
            "setting": "fast",
            "batch": 16,
            "overrides": {"kfac.async_inverse": True},
            "acktr_mean_s": 0.01,
            "a2c_mean_s": 0.008,
            "ratio": 1.25,
        },
    },
]
CAPTURED_DECOMPOSITION = [
    {
        "outcome": "passed",
        "median_s": 0.2,
        "extra_info": {"kind": "decomposition", "method": m, "n": n, "dtype": d},
    }
    for m, n, d in [("eigh", 512, "f32"), ("cholesky", 512, "f32"), ("eigh", 3137, "f32")]
] + [
    {
        "outcome": "passed",
        "extra_info": {"kind": "decomposition", "method": "eigh", "n": 9, "dtype": "f32"},
    }
]
CAPTURED_DECOMPOSITION[1]["median_s"] = 0.05


def test_tables_from_captured_results():
    assert update_ratios(CAPTURED_UPDATE) == [
        {
            "setting": "default",
            "async_inverse": False,
            "batch": 640,
            "acktr_s": 0.03,
            "a2c_s": 0.02,
            "ratio": 1.5,
            "timed": True,
        },
        {
            "setting": "fast",
            "async_inverse": True,
            "batch": 16,
            "acktr_s": 0.01,
            "a2c_s": 0.008,
            "ratio": 1.25,
            "timed": False,
        },
    ]
    # untimed entries (no median) are left out; largest size first; ratio = eigh / Cholesky
    assert decompositions(CAPTURED_DECOMPOSITION) == [
        {"n": 3137, "dtype": "f32", "eigh_s": 0.2, "cholesky_s": None, "ratio": None},
        {"n": 512, "dtype": "f32", "eigh_s": 0.2, "cholesky_s": 0.05, "ratio": 4.0},
    ]
    assert update_ratios({"error": "x"}) == [] and decompositions(None) == []


def test_render_shows_every_number():
    summary = {
        "device": "cuda",
        "device_name": "NVIDIA H200 (139 GiB, CUDA 12.8)",
        "quick": False,
        "env": "BreakoutNoFrameskip-v4",
        "preset": "openai-baselines",
        "torch": "2.13.0",
        "provenance": {"git_commit": "0123456789abcdef", "git_dirty": False},
        "determinism": {
            "steps": 20480,
            "passed": True,
            "pairs": {
                "default": {
                    "identical": False,
                    "rows": {"updates.csv": [32, 32], "episodes.csv": [40, 40]},
                    "differing": {"updates.csv:kl": 3e-9},
                },
                "deterministic-algorithms": {
                    "identical": True,
                    "rows": {"updates.csv": [32, 32], "episodes.csv": [40, 40]},
                    "differing": {},
                },
            },
        },
        "throughput": {
            "state": "done",
            "steps": 1_000_000,
            "wall_s": 250.0,
            "env_steps_per_s": 4000.0,
            "episodes": 900,
            "last20_return": 12.5,
        },
        "update_ratios": update_ratios(CAPTURED_UPDATE),
        "decomposition_table": decompositions(CAPTURED_DECOMPOSITION),
        "wall_s": {"determinism": 20.0},
        "passed": True,
        "problems": [],
    }
    text = render(summary)
    assert text.startswith("# gpu-check on NVIDIA H200 (139 GiB, CUDA 12.8)\n")
    assert "Result: **passed**" in text and "commit 0123456789" in text
    assert "| default | no | 32, 40 | updates.csv:kl (max 3e-09) |" in text
    assert "| deterministic-algorithms | yes | 32, 40 | none |" in text
    assert "1,000,000 env steps in 250.0 s: **4,000 env steps/s**" in text
    assert "| default | sync | 640 | 0.03 | 0.02 | 1.5 |" in text
    assert "| fast | async | 16 | 0.01 | 0.008 | 1.25 (quick shapes, untimed) |" in text
    assert "| 512 | f32 | 200 | 50 | 4 |" in text


def run_script(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["--device", "tpu"],
            "argument --device: invalid choice: 'tpu' (choose from 'cuda', 'cpu')",
        ),
        (
            ["--device", "cpu", "--steps", "0"],
            "--steps: 0 is not allowed (must be an integer >= 1)",
        ),
        (["--device", "cpu", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, argv, needle):
    out = tmp_path / "out"
    proc = run_script(*argv, "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"gpu-check: error: {needle}"]
    assert not out.exists()


def test_out_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_script("--device", "cpu", "--out", str(blocker))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"gpu-check: error: --out {blocker} is a file, not a directory"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path):
    proc = run_script("--out", str(tmp_path / "out"))  # --device cuda is the default
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu-check: error: --device cuda: torch.cuda.is_available() is False (no GPU, or a "
        "CPU-only torch build); use --device cpu"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_quick_cpu_run_end_to_end(tmp_path):
    """The whole script on the CPU path (about 2 minutes on a loaded 2-core machine: the Nature
    CNN's 3137² eigh dominates, hence slow)."""
    out = tmp_path / "gc"
    proc = run_script("--device", "cpu", "--quick", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu-check.json").read_text())
    assert summary["passed"] and summary["problems"] == []
    det = summary["determinism"]
    assert det["passed"] and list(det["pairs"]) == ["default"]
    pair = det["pairs"]["default"]
    assert pair["identical"] and pair["rows"]["updates.csv"] == [1, 1] and pair["parameters"] > 0
    tp = summary["throughput"]
    assert tp["state"] == "done" and tp["steps"] == 1280 and tp["env_steps_per_s"] > 0
    assert [(r["setting"], r["async_inverse"]) for r in summary["update_ratios"]] == [
        ("default", False),
        ("fast", True),
    ]
    assert all(r["ratio"] > 0 for r in summary["update_ratios"])
    sizes = [r["n"] for r in summary["decomposition_table"]]
    assert sizes == [513, 512, 257, 129, 128, 65, 64]
    assert all(r["eigh_s"] > 0 and r["cholesky_s"] > 0 for r in summary["decomposition_table"])
    text = (out / "gpu-check.md").read_text()
    assert "Result: **passed**" in text and "env steps/s" in text
