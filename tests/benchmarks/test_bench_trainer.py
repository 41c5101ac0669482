"""The trainer's env-steps/s with and without K-FAC, end to end (``Trainer.run``: rollouts,
returns, updates, logging and checkpoints), on MinAtar Breakout and Atari Breakout.

The timed body is one ACKTR run; each round's setup first runs the A2C control (preset ``a2c``)
of the same length, so ``extra_info["ratio"]`` (ACKTR steps/s ÷ A2C steps/s, median over rounds)
compares runs made back to back. Steps/s is the steady state: env steps over wall time across the
second half of a run's updates (a progress callback after every update), so start-up, the env
reset and ACKTR's cold-start updates (statistics only) are left out; the second half of an ACKTR
run holds a whole number of inverse cycles. ``extra_info`` also keeps each run's phase clock
(``time_*`` of updates.csv, µs per env step over the run; ``kfac_bench/timing.py``).

MinAtar runs are 160 ACKTR updates (51 200 env steps) in 6 rounds: with 60 updates the timed half
was about one second of each run and its rounds read 0.72–0.90 (7b5798d), over which a few
milliseconds of anything else moved the ratio; at 160 updates d8f5fee read 0.65–0.76.

Cases: MinAtar's family default (``minatar-tuned``) and the :data:`FAST`
settings on it (target ≥ 0.8); Atari's family default (``atari-tuned``, target ≥ 0.6) and the
``openai-baselines`` reference (inverse every update), with the family's own threads.
"""

from __future__ import annotations

import csv
import itertools
import time
from dataclasses import dataclass, field

import pytest
import torch
from benchlib import median

from kfac_bench.bench_report import SETTINGS, TARGETS
from kfac_bench.presets import build_config
from kfac_bench.rl.trainer import Trainer
from kfac_bench.timing import COLUMNS


@dataclass(frozen=True)
class Case:
    env: str
    preset: str
    overrides: dict = field(default_factory=dict)
    updates: int = 160  # ACKTR updates per run: the second half holds 8 inverse cycles of 10
    rounds: int = 6
    target: float | None = None


MINATAR, ATARI = "MinAtar/Breakout-v1", "BreakoutNoFrameskip-v4"
CASES = {
    **{
        f"minatar-breakout-{name}": Case(MINATAR, "minatar-tuned", overrides, target=TARGETS["trainer_ratio"])
        for name, overrides in SETTINGS.items()
    },
    # 40 updates: 10 cold, then inverses at updates 11, 21, 31: the second half holds two cycles
    "atari-breakout-atari-tuned": Case(
        ATARI, "atari-tuned", updates=40, rounds=3, target=TARGETS["trainer_ratio_atari"]
    ),
    "atari-breakout-openai-baselines": Case(ATARI, "openai-baselines", updates=20, rounds=1),
}  # fmt: skip


def _config(case: Case, preset: str, overrides: dict, steps: int):
    return build_config(case.env, preset=preset, total_steps=steps, overrides=overrides)


def steady_steps_per_s(marks: list[tuple[float, int]]) -> float:
    """Env steps/s over the second half of the updates, from (time, steps) marks taken before the
    first update and after every update (``marks[i]``: after update i); the whole run when it has
    fewer than three updates. For 40 updates the window is updates 21–40."""
    updates = len(marks) - 1
    first = marks[updates - updates // 2] if updates >= 3 else marks[0]
    (t0, s0), (t1, s1) = first, marks[-1]
    return (s1 - s0) / (t1 - t0)


def phase_us_per_step(run_dir) -> dict[str, float]:
    """Each ``time_*`` column of updates.csv summed over the run, in µs per env step."""
    with open(run_dir / "updates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:  # a run shorter than log.update_every updates (make test's quick rounds)
        return {}
    steps = float(rows[-1]["step"])
    return {c[5:]: sum(float(r[c] or 0) for r in rows) / steps * 1e6 for c in COLUMNS}


@pytest.mark.parametrize("name", list(CASES), ids=lambda s: f"trainer-{s}")
def test_trainer_steps_per_second(benchmark, device, quick, tmp_path, name):
    case = CASES[name]
    updates = 2 if quick else case.updates
    extra = {"device": device.type}
    acktr_config = _config(case, case.preset, {**extra, **case.overrides}, 1)
    batch = acktr_config.rollout.n_steps * acktr_config.rollout.n_envs
    steps = batch * updates
    acktr_config = _config(case, case.preset, {**extra, **case.overrides}, steps)
    a2c_config = _config(case, "a2c", extra, steps)
    counter = itertools.count()
    fps: dict[str, list[float]] = {"a2c": [], "acktr": []}
    phases: dict[str, dict[str, float]] = {}
    results = []

    def run(config) -> None:
        run_dir = tmp_path / f"run{next(counter)}"
        run_dir.mkdir()
        trainer = Trainer(config, run_dir)
        marks: list[tuple[float, int]] = [(time.perf_counter(), 0)]
        result = trainer.run(lambda p: marks.append((time.perf_counter(), p.steps)))
        if trainer.kfac is not None:
            trainer.kfac.close(timeout_s=60)
        results.append((config.optim.algo, result))
        fps[config.optim.algo].append(steady_steps_per_s(marks))
        phases[config.optim.algo] = phase_us_per_step(run_dir)

    benchmark.pedantic(
        lambda: run(acktr_config),
        setup=lambda: run(a2c_config),
        rounds=1 if quick else case.rounds,
        iterations=1,
        warmup_rounds=0,
    )

    for algo, result in results:
        assert result.state == "done", (algo, result)
        assert result.steps == steps
    ratios = [k / a for k, a in zip(fps["acktr"], fps["a2c"])]
    benchmark.extra_info.update(
        kind="trainer",
        env=case.env,
        setting=name,
        preset=case.preset,
        steps=steps,
        overrides=case.overrides,
        acktr_steps_per_s=fps["acktr"],
        a2c_steps_per_s=fps["a2c"],
        ratio=median(ratios),
        ratios=ratios,
        target=case.target,
        acktr_phases_us_per_step=phases["acktr"],
        a2c_phases_us_per_step=phases["a2c"],
        torch_threads=acktr_config.torch_threads or torch.get_num_threads(),  # 0: torch's own
        device=str(device),
    )
