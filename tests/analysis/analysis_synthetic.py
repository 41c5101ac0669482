"""Synthetic sweep directories for the analysis tests (no training: the files are written here
following the run directory contract, DESIGN.md §5)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: (random, best) per env used to shape synthetic returns.
ENV_RANGE = {"CartPole-v1": (22.0, 500.0), "Acrobot-v1": (-500.0, -60.0)}
#: Fraction of the env's range each label reaches at the end of training.
LEVEL = {"paper": 0.9, "baselines": 0.6, "a2c": 0.3, "kfac-reduce": 0.7}
FPS = {"paper": 1000.0, "baselines": 800.0, "a2c": 2000.0, "kfac-reduce": 900.0}
BUDGET = 10_000
EPISODE_EVERY = 50
UPDATE_EVERY = 500


def slug(env: str) -> str:
    return env.replace("/", "-")


def run_name(label: str, env: str, seed: int, axes: dict[str, Any]) -> str:
    tail = "".join(f"__{k}-{v}" for k, v in axes.items())
    return f"{label}__{slug(env)}__s{seed}{tail}"


def synthetic_returns(label: str, env: str, seed: int, steps: np.ndarray, shift: float = 0.0):
    """Return curve rising linearly to ``LEVEL[label] + shift`` of the env range by 2/3 of the
    budget, plus seeded noise."""
    lo, hi = ENV_RANGE[env]
    rng = np.random.default_rng([seed, len(label), ord(label[0]), len(env)])
    progress = np.minimum(1.0, 1.5 * steps / BUDGET)
    level = LEVEL.get(label, 0.5) + shift
    noise = rng.normal(0.0, 0.03 * (hi - lo), size=steps.shape)
    return lo + (hi - lo) * level * progress + noise


def write_run(
    root: Path,
    label: str,
    env: str,
    seed: int,
    axes: dict[str, Any] | None = None,
    state: str = "done",
    stop_at: int | None = None,
    error: str | None = None,
    files: Sequence[str] = ("config.json", "episodes.csv", "updates.csv", "status.json"),
    shift: float = 0.0,
) -> Path:
    """Write one run directory; ``stop_at`` truncates the logs (failed/unfinished runs)."""
    axes = dict(axes or {})
    run_dir = root / run_name(label, env, seed, axes)
    run_dir.mkdir(parents=True)
    algo = "a2c" if label == "a2c" else "acktr"
    last = stop_at if stop_at is not None else BUDGET
    fps = FPS.get(label, 1000.0)
    if "config.json" in files:
        config = {
            "label": label,
            "variant": "paper" if label == "a2c" else label,
            "env": env,
            "seed": seed,
            "preset": "test-preset",
            "axes": axes,
            "config": {
                "env": env,
                "total_steps": BUDGET,
                "rollout": {"n_envs": 4, "n_steps": 16},
                "optim": {"algo": algo},
                "kfac": {"damping_mode": axes.get("kfac.damping_mode", "eigen")},
            },
            "provenance": {
                "git_commit": "0123456789abcdef0123",
                "git_dirty": False,
                "versions": {"python": "3.11.9", "torch": "2.13.0", "numpy": "2.4.6"},
                "host": "testhost",
                "device": "cpu",
                "started": "2025-01-01T00:00:00",
            },
        }
        (run_dir / "config.json").write_text(json.dumps(config))
    if "episodes.csv" in files:
        steps = np.arange(EPISODE_EVERY, last + 1, EPISODE_EVERY)
        returns = synthetic_returns(label, env, seed, steps.astype(float), shift)
        lines = ["step,wall_time,return,length"]
        lines += [f"{s},{s / fps:.4f},{r:.6f},{EPISODE_EVERY}" for s, r in zip(steps, returns)]
        (run_dir / "episodes.csv").write_text("\n".join(lines) + "\n")
    if "updates.csv" in files:
        diag = ["diag/trunk.0/A_trace", "diag/trunk.0/G_trace", "diag/pi/A_cond", "diag/pi/G_cond"]
        header = (
            "step,wall_time,update,fps,policy_loss,value_loss,entropy,kl,predicted_kl,nu,lr,"
            "grad_norm," + ",".join(diag)
        )
        lines = [header]
        for i, s in enumerate(range(UPDATE_EVERY, last + 1, UPDATE_EVERY)):
            t = s / BUDGET
            lr = 0.25 * (1 - t)
            if algo == "a2c":
                k = ",,"
                d = ",,,"
            else:
                k = f"{0.001 * (1 + t):.6g},{0.0012 * (1 + t):.6g},{min(1.0, 0.5 + t):.4g}"
                d = f"{10 + i},{0.1 * (1 + i)},{1e3 * (1 + t):.4g},{1e5 * (1 + t):.4g}"
            lines.append(
                f"{s},{s / fps:.4f},{i},{fps},{-0.1:.3f},{0.5:.3f},{0.6:.3f},{k},{lr:.6g},"
                f"{1.0:.3f},{d}"
            )
        (run_dir / "updates.csv").write_text("\n".join(lines) + "\n")
    if "status.json" in files:
        status = {"state": state, "steps": last, "error": error, "wall_time": last / fps}
        (run_dir / "status.json").write_text(json.dumps(status))
    return run_dir


def build_sweep(
    root: Path,
    labels: Sequence[str] = ("paper", "baselines", "a2c"),
    envs: Sequence[str] = ("CartPole-v1", "Acrobot-v1"),
    seeds: Sequence[int] = (0, 1, 2),
    axis: tuple[str, Sequence[str]] | None = None,
    problems: bool = False,
    thresholds: dict[str, float] | None = None,
    fidelity: bool = False,
    write_sweep_json: bool = True,
) -> Path:
    """A complete synthetic sweep; ``problems`` adds a failed, an unfinished, an empty run
    directory and a sweep.json entry without a directory."""
    root.mkdir(parents=True, exist_ok=True)
    listed: list[dict[str, Any]] = []
    axis_values: list[dict[str, Any]] = [{}]
    if axis is not None:
        axis_values = [{axis[0]: v} for v in axis[1]]
    for env in envs:
        for label in labels:
            for values in axis_values:
                shift = 0.1 * list(axis_values).index(values) if axis is not None else 0.0
                for seed in seeds:
                    d = write_run(root, label, env, seed, values, shift=shift)
                    listed.append({"name": d.name, "state": "done"})
    if problems:
        env = envs[0]
        d = write_run(
            root,
            labels[0],
            env,
            99,
            state="failed",
            stop_at=3000,
            error="RuntimeError: factor inverse failed\nTraceback (most recent call last): ...",
        )
        listed.append({"name": d.name, "state": "failed"})
        d = write_run(root, labels[1], env, 98, state="running", stop_at=4000)
        listed.append({"name": d.name, "state": "running"})
        d = write_run(root, labels[-1], env, 97, files=("config.json",))
        listed.append({"name": d.name, "state": "running"})
        listed.append({"name": run_name(labels[-1], env, 96, {}), "state": "pending"})
    if fidelity:
        lines = ["variant,damping_mode,layer,cosine,step"]
        for v, base in (("paper", 0.9), ("baselines", 0.8)):
            for mode, off in (("eigen", 0.0), ("tikhonov", -0.1)):
                for layer, loff in (("trunk.0", 0.0), ("pi", 0.04)):
                    lines.append(f"{v},{mode},{layer},{base + off + loff:.3f},0")
        first = sorted(p for p in root.iterdir() if p.is_dir())[0]
        (first / "fidelity.csv").write_text("\n".join(lines) + "\n")
    if write_sweep_json:
        meta: dict[str, Any] = {
            "name": root.name,
            "spec": {"labels": list(labels), "envs": list(envs), "seeds": list(seeds)},
            "spec_hash": "abc123",
            "runs": listed,
        }
        if thresholds is not None:
            meta["thresholds"] = thresholds
        (root / "sweep.json").write_text(json.dumps(meta))
    return root
