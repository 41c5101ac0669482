"""The trainer's env-steps/s with and without K-FAC on MinAtar Breakout (``Trainer.run``: rollouts,
returns, updates, logging and the final checkpoint; the family's own setting of one torch thread).

The timed body is one ACKTR run; each round's setup first times one A2C run (preset ``a2c``) of the
same length, so ``extra_info["ratio"]`` (ACKTR steps/s ÷ A2C steps/s, median over rounds) compares
runs made back to back. ``default`` is the ``minatar-tuned`` preset; ``fast`` adds
:data:`kfac_bench.bench_report.FAST`; ``fast-tikhonov-pi`` also switches the damping mode.
"""

from __future__ import annotations

import itertools
import time

import pytest
from benchlib import median

from kfac_bench.bench_report import SETTINGS
from kfac_bench.presets import build_config
from kfac_bench.rl.trainer import Trainer

ENV = "MinAtar/Breakout-v1"
UPDATES = 60  # 16 envs × 20 steps each: 19 200 env steps, six inverse cycles
ROUNDS = 4


def _config(preset: str, overrides: dict, updates: int):
    batch = 16 * 20
    return build_config(ENV, preset=preset, total_steps=batch * updates, overrides=overrides)


@pytest.mark.parametrize("setting", list(SETTINGS), ids=lambda s: f"trainer-minatar-breakout-{s}")
def test_trainer_steps_per_second(benchmark, device, quick, tmp_path, setting):
    updates = 2 if quick else UPDATES
    extra = {"device": device.type}
    overrides = {k: v for k, v in SETTINGS[setting].items() if k.startswith("kfac.")}
    acktr_config = _config("minatar-tuned", {**extra, **overrides}, updates)
    a2c_config = _config("a2c", extra, updates)
    counter = itertools.count()
    a2c_fps: list[float] = []
    acktr_fps: list[float] = []
    results = []

    def run(config) -> float:
        run_dir = tmp_path / f"run{next(counter)}"
        run_dir.mkdir()
        trainer = Trainer(config, run_dir)
        start = time.perf_counter()
        result = trainer.run()
        elapsed = time.perf_counter() - start
        if trainer.kfac is not None:
            trainer.kfac.close(timeout_s=60)
        results.append((config.optim.algo, result))
        return result.steps / elapsed

    def a2c_then_build():
        a2c_fps.append(run(a2c_config))

    def acktr_run():
        acktr_fps.append(run(acktr_config))

    benchmark.pedantic(
        acktr_run, setup=a2c_then_build, rounds=ROUNDS, iterations=1, warmup_rounds=0
    )

    for algo, result in results:
        assert result.state == "done", (algo, result)
        assert result.steps == acktr_config.total_steps
    ratios = [k / a for k, a in zip(acktr_fps, a2c_fps)]
    benchmark.extra_info.update(
        kind="trainer",
        env=ENV,
        setting=setting,
        steps=acktr_config.total_steps,
        overrides=overrides,
        acktr_steps_per_s=acktr_fps,
        a2c_steps_per_s=a2c_fps,
        ratio=median(ratios),
        ratios=ratios,
        torch_threads=acktr_config.torch_threads,
        device=str(device),
    )
