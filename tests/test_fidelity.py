"""Fisher fidelity (issue 7): exact-Fisher oracles, CG against dense solves, the split-invariance
signature of paper vs baselines, and the command end to end on CartPole and MinAtar Breakout."""

from __future__ import annotations

import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fidelity_support import one_thread  # noqa: F401  (fixture)
from torch import nn

import variants
from kfac_bench.config import KfacConfig, PolicyConfig
from kfac_bench.fidelity import COLUMNS, Settings, measure, run_for_run_dir
from kfac_bench.fidelity.approx import capture_layer_batches, variant_blocks
from kfac_bench.fidelity.exact import (
    FisherProblem,
    FunctionalFisher,
    JacobianFisher,
    fisher_terms,
    jacobian,
)
from kfac_bench.fidelity.layout import build_slots, flatten, unflatten
from kfac_bench.fidelity.metrics import cosine
from kfac_bench.fidelity.solvers import damped_solve
from kfac_bench.rl.policies import build_policy
from kfac_bench.rl.trainer import fisher_loss

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "kfac-bench"
EXPAND = ("paper", "baselines", "kfac-pytorch", "ikostrikov")
F64 = KfacConfig(dtype="float64")
SAMPLED = ("sampled-fisher",)  # K-FAC's own batch Fisher: the factorisation is the only difference


class OneLinear(nn.Module):
    """A policy that is one Linear layer: logits = W x + b, value 0 (no value Fisher term)."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x.new_zeros(x.shape[0])


def problem_for(policy: nn.Module, obs: torch.Tensor, seed: int, include_value: bool = True):
    """Actions sampled from the policy and ε ~ N(0, 1), seeded; float64 throughout."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, _ = policy(obs)
    actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
    noise = torch.randn(obs.shape[0], generator=gen, dtype=torch.float64)
    return FisherProblem(policy, build_slots(policy), obs, actions, noise, 1.0, include_value)


def small_mlp(seed: int = 0, batch: int = 16):
    torch.manual_seed(seed)
    policy = build_policy((4,), 2, PolicyConfig(hidden=(8, 8))).double()
    obs = torch.randn(batch, 4, dtype=torch.float64)
    return policy, obs


def small_cnn(seed: int = 0, batch: int = 24):
    """MinAtar CNN on 2×6×6 inputs: conv 16 3×3 (T = 16 positions) -> fc 128 -> heads."""
    torch.manual_seed(seed)
    policy = build_policy((2, 6, 6), 3, PolicyConfig(arch="minatar-cnn")).double()
    obs = (torch.rand(batch, 2, 6, 6) < 0.3).double()
    return policy, obs


def gradient_like(problem: FisherProblem, seed: int) -> torch.Tensor:
    """A training-loss-like gradient: Σ_n w_n g_n (lies in the span of the per-example grads)."""
    jac = jacobian(problem)
    w = torch.randn(problem.batch, generator=torch.Generator().manual_seed(seed), dtype=jac.dtype)
    return w @ jac / problem.batch


def directions(problem, g, name: str, config: KfacConfig) -> torch.Tensor:
    blocks = variant_blocks(variants.get(name), problem.slots, capture_layer_batches(problem))
    return torch.cat([b.precondition(b.slot.take(g), config).delta for b in blocks])


# --------------------------------------------------------------------------------------------
# the exact side


def test_fisher_terms_mean_is_the_trainers_fisher_loss():
    policy, obs = small_mlp()
    logits, values = policy(obs)
    actions = torch.randint(0, 2, (obs.shape[0],))
    torch.manual_seed(5)
    want = fisher_loss(logits, values, actions, 0.7, include_value=True)
    torch.manual_seed(5)
    noise = torch.randn_like(values)
    got = fisher_terms(logits, values, actions, noise, 0.7, include_value=True).mean()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_layout_round_trip_and_m_order():
    policy, _ = small_cnn()
    slots = build_slots(policy)
    assert [s.name for s in slots] == ["trunk.0", "trunk.3", "pi", "v"]
    params = {k: v.detach() for k, v in policy.named_parameters()}
    flat = flatten(slots, params)
    conv = slots[0]
    m = conv.matrix(conv.take(flat))  # [W.view(C_out, -1) | b]
    torch.testing.assert_close(m[:, :-1], policy.trunk[0].weight.reshape(16, -1))
    torch.testing.assert_close(m[:, -1], policy.trunk[0].bias)
    back = unflatten(slots, flat)
    assert all(torch.equal(back[k], params[k]) for k in params)


def test_functional_products_equal_jacobian_products():
    policy, obs = small_mlp(1)
    problem = problem_for(policy, obs, seed=1)
    stored = JacobianFisher.from_jacobian(jacobian(problem), problem.slots)
    functional = FunctionalFisher(problem)
    v = torch.randn(3, problem.dim, dtype=torch.float64)
    torch.testing.assert_close(functional.mv(v), stored.mv(v), rtol=1e-10, atol=1e-12)
    slot = problem.slots[1]
    torch.testing.assert_close(
        functional.mv(slot.take(v), slot), stored.mv(slot.take(v), slot), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("kind", ["jacobian", "functional"])
def test_cg_matches_dense_solve(kind):
    policy, obs = small_mlp(2)
    problem = problem_for(policy, obs, seed=2)
    jac = jacobian(problem)
    fisher = jac.T @ jac / problem.batch
    g = gradient_like(problem, 2) + 1e-3 * torch.randn(problem.dim, dtype=torch.float64)
    op = (
        JacobianFisher.from_jacobian(jac, problem.slots)
        if kind == "jacobian"
        else FunctionalFisher(problem)
    )
    for lam in (1e-2, 1e-4):
        want = torch.linalg.solve(fisher + lam * torch.eye(problem.dim, dtype=fisher.dtype), g)
        got = damped_solve(op, g, lam, tol=1e-12, max_iter=500)
        assert got.converged and got.iterations <= 2 * problem.batch + 50  # the default cap
        torch.testing.assert_close(got.x, want, rtol=1e-7, atol=1e-9 * float(want.abs().max()))


def test_measure_is_the_same_without_the_stored_jacobian():
    policy, obs = small_mlp(8)
    problem = problem_for(policy, obs, seed=8)
    g = gradient_like(problem, 8)
    settings = Settings(variants=("paper", "ikostrikov"), cg_tol=1e-12)
    stored = measure(problem, g, F64, settings)
    functional = measure(problem, g, F64, dataclasses.replace(settings, max_jacobian_mb=0))
    for a, b in zip(stored, functional):
        assert (a["reference"], a["variant"], a["damping_mode"], a["layer"]) == (
            b["reference"],
            b["variant"],
            b["damping_mode"],
            b["layer"],
        )
        for key in ("cosine", "norm_ratio", "kl_variant_direction", "block_rel_error"):
            assert a[key] == pytest.approx(b[key], rel=1e-7, abs=1e-10)


# --------------------------------------------------------------------------------------------
# K-FAC against the exact Fisher


def _layer_error(rows, layer="fc"):
    (row,) = [r for r in rows if r["layer"] == layer and r["damping_mode"] == "eigen"]
    return row["block_rel_error"]


@pytest.mark.parametrize("name", [*EXPAND, "kfac-reduce"])
def test_single_linear_batch1_block_error_is_zero(name):
    """K-FAC is exact for one Linear layer and one example (kfac-jax's dense oracle)."""
    torch.manual_seed(3)
    policy = OneLinear(5, 4, bias=name != "ikostrikov").double()
    problem = problem_for(policy, torch.randn(1, 5, dtype=torch.float64), 3, include_value=False)
    g = gradient_like(problem, 3)
    settings = Settings(variants=(name,), damping_modes=("eigen",), references=SAMPLED)
    rows = measure(problem, g, F64, settings)
    assert _layer_error(rows) < 1e-12
    assert _layer_error(rows, "network") < 1e-12


def test_ikostrikov_with_bias_drops_exactly_the_weight_bias_cross_blocks():
    """Split bias at B = 1: F̃ = F minus the two cross blocks ĝĝᵀ ⊗ a, so
    ‖F − F̃‖/‖F‖ = √2·‖a‖/(‖a‖² + 1) — the measurement sees the structural difference."""
    torch.manual_seed(4)
    policy = OneLinear(5, 4).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    problem = problem_for(policy, x, 4, include_value=False)
    rows = measure(
        problem,
        gradient_like(problem, 4),
        F64,
        Settings(variants=("paper", "ikostrikov"), damping_modes=("eigen",), references=SAMPLED),
    )
    a2 = float(x.pow(2).sum())
    errors = {r["variant"]: r["block_rel_error"] for r in rows if r["layer"] == "fc"}
    assert errors["paper"] < 1e-12
    assert errors["ikostrikov"] == pytest.approx(math.sqrt(2 * a2) / (a2 + 1), rel=1e-10)


@pytest.mark.parametrize("name", [*EXPAND, "kfac-reduce"])
def test_direction_is_the_damped_dense_block_solve(name):
    """eigen, τ = 0: each layer's direction is (F̃_l + λI)⁻¹ g_l with F̃_l the dense block."""
    policy, obs = small_cnn(5, batch=8)
    problem = problem_for(policy, obs, 5)
    g = gradient_like(problem, 5)
    lam = 0.01
    config = dataclasses.replace(F64, eigen_clip=0.0, damping=lam)
    blocks = variant_blocks(variants.get(name), problem.slots, capture_layer_batches(problem))
    for block in blocks:
        if block.slot.size > 1000:
            continue
        g_l = block.slot.take(g)
        dense = block.dense()
        want = torch.linalg.solve(dense + lam * torch.eye(dense.shape[0], dtype=dense.dtype), g_l)
        got = block.precondition(g_l, config).delta
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10 * float(want.abs().max()))
        v = torch.randn(2, block.slot.size, dtype=torch.float64)
        torch.testing.assert_close(block.mv(v), v @ dense.T)


def test_probe_estimate_agrees_with_dense_error():
    policy, obs = small_mlp(6, batch=32)
    problem = problem_for(policy, obs, 6)
    g = gradient_like(problem, 6)
    settings = Settings(variants=("paper",), damping_modes=("eigen",), reference=False)
    dense = measure(problem, g, F64, settings)
    probed = measure(
        problem, g, F64, dataclasses.replace(settings, dense_limit=0, probes=400, budget_s=600)
    )
    for d, p in zip(dense, probed):
        assert d["layer"] == p["layer"] and p["block_error_method"] == "probes"
        assert d["block_error_method"] == ("dense" if d["params"] ** 2 <= 4e6 else "probes")
        assert p["block_error_probes"] == 400
        assert abs(p["block_rel_error"] - d["block_rel_error"]) < 4 * p["block_error_se"] + 1e-12
        assert p["block_error_se"] < 0.1 * d["block_rel_error"]


def test_paper_and_baselines_split_invariance_signature():
    """A⊗G is identical (DESIGN.md §3): same direction under eigen damping with τ = 0;
    per-factor Tikhonov damping moves a T² = 256 between the factors' shifts and breaks it."""
    policy, obs = small_cnn(7)
    problem = problem_for(policy, obs, 7)
    g = gradient_like(problem, 7)
    eigen = dataclasses.replace(F64, damping_mode="eigen", eigen_clip=0.0)
    tikhonov = dataclasses.replace(F64, damping_mode="tikhonov")
    same = cosine(
        directions(problem, g, "paper", eigen), directions(problem, g, "baselines", eigen)
    )
    differ = cosine(
        directions(problem, g, "paper", tikhonov), directions(problem, g, "baselines", tikhonov)
    )
    assert same == pytest.approx(1.0, abs=1e-12)
    assert differ < 1 - 1e-3  # a clear margin below 1 − 1e-6

    settings = Settings(
        variants=("paper", "baselines"), eigen_clip=0.0, reference=False, references=SAMPLED
    )
    rows = measure(problem, g, F64, settings)
    cos = {(r["variant"], r["damping_mode"], r["layer"]): r["cosine"] for r in rows}
    for layer in ("trunk.0", "network"):
        assert cos["paper", "eigen", layer] == pytest.approx(
            cos["baselines", "eigen", layer], abs=1e-9
        )
        assert abs(cos["paper", "tikhonov", layer] - cos["baselines", "tikhonov", layer]) > 1e-4
        assert cos["paper", "tikhonov-pi", layer] == pytest.approx(
            cos["baselines", "tikhonov-pi", layer], abs=1e-9
        )


# --------------------------------------------------------------------------------------------
# the command and the sweep hook


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _check_outputs(out: Path, env: str, batch: int) -> list[dict[str, str]]:
    rows = _read(out / "fidelity.csv")
    assert list(rows[0]) == COLUMNS
    for png in ("fidelity.png", "fidelity.svg"):
        assert (out / png).stat().st_size > 1000
    measured = [r for r in rows if r["variant"] in variants.names()]
    assert {r["variant"] for r in measured} == set(variants.names())
    assert {r["damping_mode"] for r in measured} == {"eigen", "tikhonov", "tikhonov-pi", "ekfac"}
    assert {r["fisher_type"] for r in measured} == {"sampled"}  # the default
    assert all(r["env"] == env and int(r["batch"]) == batch for r in rows)
    cosines = [float(r["cosine"]) for r in rows]
    assert all(-1.0 <= c <= 1.0 for c in cosines)
    networks = [r for r in measured if r["layer"] == "network"]
    assert len(networks) == 5 * 4 * 2  # variants × damping modes × references
    assert {r["reference"] for r in rows} == {"true-fisher", "sampled-fisher"}
    return rows


@pytest.mark.parametrize(
    ("env", "batch", "layers"),
    [
        # classic-tuned preconditions the actor only (its critic is a separate Adam network)
        ("CartPole-v1", 64, {"trunk.0", "trunk.2", "pi"}),
        ("MinAtar/Breakout-v1", 32, {"trunk.0", "trunk.3", "pi", "v"}),
    ],
)
def test_command_end_to_end(tmp_path, env, batch, layers):
    out = tmp_path / "fid"
    cmd = [
        str(CLI),
        "fidelity",
        "--env",
        env,
        "--batch",
        str(batch),
        "--out",
        str(out),
        "--budget",
        "30",
        "--probes",
        "16",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fidelity:" in done.stdout and "wrote" in done.stdout
    rows = _check_outputs(out, env, batch)
    assert {r["layer"] for r in rows} == layers | {"network"}
    assert all(r["checkpoint"] == "initial" for r in rows)


def test_run_for_run_dir_on_a_trained_checkpoint(tmp_path):
    from kfac_bench.presets import build_config
    from kfac_bench.rl.trainer import train

    config = build_config(
        "CartPole-v1",
        variant="baselines",
        total_steps=512,
        overrides={"rollout.n_envs": 16, "rollout.n_steps": 16},
    )
    run_dir = tmp_path / "run"
    assert train(config, run_dir).state == "done"
    path = run_for_run_dir(run_dir, batch=32, budget_s=20)
    assert path == run_dir / "fidelity.csv"
    rows = _check_outputs(run_dir, "CartPole-v1", 32)
    assert {r["checkpoint"] for r in rows} == {str(run_dir)}
    assert {r["step"] for r in rows} == {"512"}


def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from kfac_bench.cli import main

    monkeypatch.setattr(sys, "argv", ["kfac-bench"])
    assert main(["fidelity", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["fidelity", "--env", "CartPole-v1", "--variants", "nope"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err
    assert main(["fidelity"]) == 2
    assert "--env" in capsys.readouterr().err
