"""Whole updates: one ACKTR update vs one A2C update on the same batch and network, amortised over
a cycle of ``kfac.inverse_every`` consecutive updates (so every cycle holds one inverse).

The timed body is one ACKTR cycle of ``Trainer.update`` (the trainer's real code path: Fisher
pass, training loss, K-FAC step); each round's setup runs one A2C cycle on the same batch and an
identically initialised network, so ``extra_info["ratio"]`` (median over rounds of ACKTR cycle /
A2C cycle) compares the two at the same moment. ``default`` is the KfacConfig defaults (the
``ikostrikov`` preset on Atari: statistics every update, inverse every 10, synchronous eigh,
float32); ``fast`` adds :data:`kfac_bench.bench_report.FAST`; ``fast-tikhonov-pi`` (MinAtar only)
also switches the damping mode (:data:`kfac_bench.bench_report.FAST_TIKHONOV_PI`).
"""

from __future__ import annotations

import pytest
from benchlib import UPDATE_NETS, UpdateHarness, median

from kfac_bench.bench_report import SETTINGS

CASES = [
    pytest.param("nature", 32, 20, "default", marks=pytest.mark.slow),
    pytest.param("nature", 32, 20, "fast", marks=pytest.mark.slow),
    pytest.param("minatar", 16, 20, "default"),
    pytest.param("minatar", 16, 20, "fast"),
    pytest.param("minatar", 16, 20, "fast-tikhonov-pi"),
]
IDS = ["update-nature-b640-default", "update-nature-b640-fast"]
IDS += [f"update-minatar-b320-{s}" for s in ("default", "fast", "fast-tikhonov-pi")]
# rounds per (net, setting); a Nature default cycle can hold up to 60 s of syevd on 2 threads
ROUNDS = {("nature", "default"): 2, ("nature", "fast"): 3}


def _overrides(setting: str) -> dict:
    return {key: value for key, value in SETTINGS[setting].items() if key.startswith("kfac.")}


@pytest.mark.parametrize(("net", "n_envs", "n_steps", "setting"), CASES, ids=IDS)
def test_update_cycle(benchmark, device, quick, net, n_envs, n_steps, setting):
    if quick:  # 16 rows: fast's 1/4 subsample keeps 4 (a rank-1 3137² factor can make a
        n_envs, n_steps = 4, 4  # one-thread float32 syevd fail to converge)
    preset = UPDATE_NETS[net][4]
    overrides = _overrides(setting)
    acktr = UpdateHarness(net, preset, overrides, n_envs, n_steps, device)
    a2c = UpdateHarness(net, "a2c", {}, n_envs, n_steps, device)
    kfac_config = acktr.config.kfac
    cycle = 2 if quick else kfac_config.inverse_every
    # Warm-up: the first (synchronous) decomposition, then align the cycles so that each holds
    # one decomposition and, with the asynchronous inverse, both its start and its install:
    # no background work may spill into the A2C cycle timed between two ACKTR cycles.
    warmup = 1
    if kfac_config.async_inverse and not quick:
        warmup = kfac_config.inverse_every - kfac_config.async_staleness + 1
    acktr.cycle(warmup)
    a2c.cycle(1)
    phases = acktr.time_phases()  # cumulative seconds per K-FAC phase over the timed cycles
    acktr_cycles: list[list[float]] = []
    a2c_cycles: list[list[float]] = []
    infos = []
    in_flight: list[bool] = []

    def a2c_cycle():
        a2c_cycles.append(a2c.cycle(cycle))

    def acktr_cycle():
        acktr_cycles.append(acktr.cycle(cycle))
        infos.append(acktr.trainer.kfac.inverse_staleness)
        in_flight.append(acktr.trainer.kfac._job is not None)

    try:
        benchmark.pedantic(  # disabled (make test): setup and body run once
            acktr_cycle,
            setup=a2c_cycle,
            rounds=ROUNDS.get((net, setting), 5),
            iterations=1,
            warmup_rounds=0,
        )
    finally:
        acktr.close()
        a2c.close()

    # the K-FAC step ran: statistics folded, decompositions made, parameters moved finitely
    kfac = acktr.trainer.kfac
    assert kfac is not None and a2c.trainer.kfac is None
    assert kfac.kfac_steps == warmup + cycle * len(acktr_cycles)
    if not quick:
        assert not any(in_flight)  # no background decomposition ran behind the A2C cycles
    assert all(layer.weights is not None for layer in kfac.layers.values())
    acktr.trainer.check_parameters()
    a2c.trainer.check_parameters()

    ratios = [sum(k) / sum(a) for k, a in zip(acktr_cycles, a2c_cycles)]
    updates = max(1, cycle * len(acktr_cycles))
    per_update = {name: seconds / updates for name, seconds in phases.items()}
    if per_update:
        # the rest of an ACKTR update: forward, losses, training backward, trainer bookkeeping;
        # the rest of the K-FAC step: trust region, momentum and the parameter update
        per_update["kfac_step_other"] = (
            per_update["kfac_step"]
            - per_update.get("decompositions", 0.0)
            - per_update.get("precondition", 0.0)
        )
        per_update["forward_backward_other"] = (
            per_update["update"]
            - per_update["kfac_step"]
            - per_update.get("fisher_backward", 0.0)
            - per_update.get("statistics", 0.0)
        )
    benchmark.extra_info.update(
        kind="update",
        net=net,
        batch=n_envs * n_steps,
        setting=setting,
        cycle=cycle,
        overrides=overrides,
        acktr_update_s=[[round(t, 6) for t in c] for c in acktr_cycles],
        a2c_update_s=[[round(t, 6) for t in c] for c in a2c_cycles],
        acktr_mean_s=median([sum(c) / len(c) for c in acktr_cycles]),
        a2c_mean_s=median([sum(c) / len(c) for c in a2c_cycles]),
        ratio=median(ratios),
        ratios=ratios,
        staleness_end_of_cycle=infos,
        phases_per_update_s=per_update,
        torch_threads=acktr.trainer_threads,
        device=str(device),
    )
