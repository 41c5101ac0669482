"""Config domains and combinations (issue 12, defects 1, 2 and 7).

Every bad value is refused by ``build_config`` with ONE line naming the key, the value and the
allowed range, exit code 2, before anything is written; the identity keys are refused in ``--set``
with a pointer to their flag; combinations no update rule can serve are refused with a reason.
The CLI cases run ``kfac_bench.cli.main`` in-process (one runs the installed ``kfac-bench``).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import variants
from kfac_bench import cli
from kfac_bench.bench_report import FAST
from kfac_bench.config import (
    IDENTITY_FLAGS,
    MAX_SEED,
    ConfigError,
    KfacConfig,
    RunConfig,
    check_consistency,
    check_domains,
    leaf_domains,
    leaf_keys,
)
from kfac_bench.curvature import KFAC, KfacError
from kfac_bench.domains import (
    AtLeast,
    Choices,
    Each,
    Finite,
    Fraction,
    Identity,
    NonNegative,
    Positive,
    Probability,
)
from kfac_bench.presets import FAMILY_BASE, PRESETS, build_config

TRAIN = ["train", "--env", "CartPole-v1", "--steps", "2000", "--no-progress"]


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------
# defects 1 and 2: out-of-range values, through `kfac-bench train`

RANGE_CASES = [
    # defect 1: ran to `done` with exit 0
    (["--steps", "-5"], "total_steps: -5 is not allowed (must be an integer >= 1)"),
    (["--set", "optim.lr=-1"], "optim.lr: -1.0 is not allowed (must be a number in (0, 1000000])"),
    (
        ["--set", "kfac.damping=1e999"],
        "kfac.damping: inf is not allowed (must be a finite number > 0)",
    ),
    (
        ["--set", "kfac.damping=-1"],
        "kfac.damping: -1.0 is not allowed (must be a finite number > 0)",
    ),
    (
        ["--set", "rollout.gamma=5"],
        "rollout.gamma: 5.0 is not allowed (must be a number in [0, 1])",
    ),
    (["--set", "total_steps=-7"], "total_steps: -7 is not allowed (must be an integer >= 1)"),
    (["--set", "optim.lr=NaN"], "optim.lr: nan is not allowed (must be a number in (0, 1000000])"),
    # defect 1: crashed with a traceback
    (
        ["--set", "kfac.inverse_every=0"],
        "kfac.inverse_every: 0 is not allowed (must be an integer >= 1)",
    ),
    (
        ["--set", "log.update_every=0"],
        "log.update_every: 0 is not allowed (must be an integer >= 1)",
    ),
    (
        ["--set", "log.checkpoint_every=0"],
        "log.checkpoint_every: 0 is not allowed (must be an integer >= 1)",
    ),
    (["--set", "rollout.n_steps=0"], "rollout.n_steps: 0 is not allowed (must be an integer >= 1)"),
    (["--seed", "-1"], "seed: -1 is not allowed (must be an integer in [0, 999999999])"),
    (
        ["--set", "optim.lr=1e308"],
        "optim.lr: 1e+308 is not allowed (must be a number in (0, 1000000])",
    ),
    # defect 2: left a run directory behind
    (["--set", "rollout.n_envs=0"], "rollout.n_envs: 0 is not allowed (must be an integer >= 1)"),
    (
        ["--set", "kfac.stats_decay=2"],
        "kfac.stats_decay: 2.0 is not allowed (must be a number in [0, 1))",
    ),
    (
        ["--seed", "12345678901234567890"],
        "seed: 12345678901234567890 is not allowed (must be an integer in [0, 999999999])",
    ),
    # more of the same kind
    (
        ["--set", "rollout.gamma=-0.01"],
        "rollout.gamma: -0.01 is not allowed (must be a number in [0, 1])",
    ),
    (
        ["--set", "kfac.stats_batch_fraction=0"],
        "kfac.stats_batch_fraction: 0.0 is not allowed (must be a number in (0, 1])",
    ),
    (
        ["--set", "kfac.momentum=1"],
        "kfac.momentum: 1.0 is not allowed (must be a number in [0, 1))",
    ),
    (
        ["--set", "optim.max_grad_norm=-Infinity"],
        "optim.max_grad_norm: -inf is not allowed (must be a finite number > 0)",
    ),
    (
        ["--set", "policy.hidden=[64,0]"],
        "policy.hidden: [64, 0] is not allowed (must be a list, each an integer >= 1)",
    ),
    (
        ["--set", "torch_threads=100000"],
        "torch_threads: 100000 is not allowed (must be an integer in [0, 1024])",
    ),
    (
        ["--set", "optim.lr=1" + "0" * 400],
        "optim.lr: 1000000000000000000000000000000000000... is not a finite number",
    ),
]


@pytest.mark.parametrize(("args", "line"), RANGE_CASES, ids=[" ".join(a) for a, _ in RANGE_CASES])
def test_train_refuses_out_of_range_values(tmp_path, monkeypatch, capsys, args, line):
    out = tmp_path / "D"
    code, stdout, stderr = run_cli([*TRAIN, "--out", str(out), *args], monkeypatch, capsys)
    assert code == 2
    assert stderr == f"kfac-bench: error: {line}\n"
    assert stdout == ""
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# defect 7: identity keys in --set


@pytest.mark.parametrize(
    ("item", "flag"),
    [
        ("env=MinAtar/Breakout-v1", "--env"),
        ("preset=a2c", "--preset"),
        ("variant=nope", "--variant"),  # also defect 2: left a directory behind
        ("variant=baselines", "--variant"),
        ("seed=3", "--seed"),
    ],
)
def test_train_refuses_identity_keys_in_set(tmp_path, monkeypatch, capsys, item, flag):
    out = tmp_path / "D"
    code, stdout, stderr = run_cli([*TRAIN, "--out", str(out), "--set", item], monkeypatch, capsys)
    key = item.split("=")[0]
    assert code == 2 and stdout == "" and not out.exists()
    assert stderr == (
        f"kfac-bench: error: {key}: cannot be set with --set (it names the run); use {flag}\n"
    )


def test_build_config_refuses_every_identity_key_in_overrides():
    same_as_flags = {"env": "CartPole-v1", "variant": "paper", "preset": "classic-tuned", "seed": 0}
    assert set(IDENTITY_FLAGS) == set(same_as_flags)
    for key, flag in IDENTITY_FLAGS.items():  # refused even where it agrees with the flag
        with pytest.raises(ConfigError, match=f"^{key}: cannot be set with --set .*use {flag}$"):
            build_config("CartPole-v1", overrides={key: same_as_flags[key]})


def test_unknown_variant_flag_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "D"
    code, _, stderr = run_cli([*TRAIN, "--out", str(out), "--variant", "nope"], monkeypatch, capsys)
    assert code == 2 and not out.exists()
    assert stderr.startswith("kfac-bench: error: unknown variant 'nope'; valid variants: paper")
    assert stderr.count("\n") == 1


# --------------------------------------------------------------------------------------------
# incompatible combinations


def test_readme_fast_block_on_cartpole_is_refused_with_a_reason(tmp_path):
    """The installed entry point, as the README's "fast" block runs it: async inverse with
    staleness 5 on classic-tuned (inverse every update) raised a KfacError traceback."""
    out = tmp_path / "D"
    exe = Path(sys.executable).with_name("kfac-bench")
    sets = [f"--set={k}={str(v).lower()}" for k, v in FAST.items()]
    proc = subprocess.run(
        [str(exe), *TRAIN, "--out", str(out), *sets], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2 and proc.stdout == "" and not out.exists()
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        "kfac-bench: error: kfac.async_inverse=true needs kfac.async_staleness <= "
        "kfac.inverse_every, got 5 > 1 (one decomposition runs at a time"
    )


def test_async_inverse_with_the_suggested_staleness_trains(tmp_path, monkeypatch, capsys):
    """The refusal's own advice works: staleness 1 <= inverse_every 1 runs to done."""
    out = tmp_path / "D"
    sets = ["--set", "kfac.async_inverse=true", "--set", "kfac.async_staleness=1"]
    code, stdout, stderr = run_cli([*TRAIN, "--out", str(out), *sets], monkeypatch, capsys)
    assert code == 0, stderr
    assert "done" in stdout.strip().splitlines()[-1]
    assert (out / "status.json").exists()


@pytest.mark.parametrize("every", [1, 3, 5])
@pytest.mark.parametrize("staleness", [1, 2, 5, 6])
def test_async_rule_refuses_exactly_what_kfac_cannot_serve(every, staleness):
    """check_consistency refuses a combination iff KFAC itself would raise on it."""
    kfac = KfacConfig(async_inverse=True, async_staleness=staleness, inverse_every=every)
    config = RunConfig(env="CartPole-v1", kfac=kfac)
    try:
        KFAC(nn.Linear(2, 2), variants.get("paper"), kfac, lr=0.1)
        kfac_serves = True
    except KfacError:
        kfac_serves = False
    if kfac_serves:
        assert check_consistency(config) is config
    else:
        with pytest.raises(ConfigError, match=r"kfac\.async_inverse=true needs"):
            check_consistency(config)
    # a first-order control never builds KFAC, so its kfac block is not held against it
    a2c = dataclasses.replace(config, optim=dataclasses.replace(config.optim, algo="a2c"))
    assert check_consistency(a2c) is a2c


def test_ppo_minibatch_may_not_exceed_the_batch(tmp_path, monkeypatch, capsys):
    base = build_config("CartPole-v1", preset="ppo")  # rl-zoo: 8 envs × 32 steps = 256
    assert (base.rollout.n_envs, base.rollout.n_steps) == (8, 32)
    assert build_config("CartPole-v1", preset="ppo", overrides={"ppo.minibatch_size": 256})
    out = tmp_path / "D"
    args = [*TRAIN, "--out", str(out), "--preset", "ppo", "--set", "ppo.minibatch_size=257"]
    code, _, stderr = run_cli(args, monkeypatch, capsys)
    assert code == 2 and not out.exists()
    assert stderr == (
        "kfac-bench: error: ppo.minibatch_size: 257 exceeds the batch of rollout.n_envs × "
        "rollout.n_steps = 8 × 32 = 256 transitions\n"
    )
    # ACKTR ignores the ppo block
    build_config("CartPole-v1", overrides={"ppo.minibatch_size": 10**6})


def test_separate_adam_critic_needs_acktr():
    with pytest.raises(
        ConfigError, match=r"^optim.critic='separate-adam' needs optim.algo='acktr'"
    ):
        build_config("CartPole-v1", preset="a2c", overrides={"optim.critic": "separate-adam"})
    with pytest.raises(ConfigError, match=r"optim.critic_steps > 1 needs"):
        build_config("CartPole-v1", overrides={"optim.critic": "shared", "optim.critic_steps": 8})


# --------------------------------------------------------------------------------------------
# sweep --dry-run builds every run's config through the same path


def test_sweep_dry_run_refuses_out_of_range_values_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    spec = tmp_path / "s.toml"
    spec.write_text(
        'variants = ["paper"]\nenvs = ["CartPole-v1"]\nseeds = 2\nsteps = 2000\n'
        '[grid]\n"kfac.stats_decay" = [0.99, 2.0]\n'
    )
    code, _, stderr = run_cli(["sweep", str(spec), "--dry-run"], monkeypatch, capsys)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("kfac-bench: error: ")
    assert stderr.endswith(
        "CartPole-v1 / paper: kfac.stats_decay: 2.0 is not allowed (must be a number in [0, 1))\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_sweep_dry_run_refuses_the_fast_block_on_cartpole(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "s.toml"
    sets = "\n".join(f'"{k}" = {str(v).lower()}' for k, v in FAST.items())
    spec.write_text(
        f'variants = ["paper"]\nenvs = ["CartPole-v1"]\nseeds = 1\nsteps = 2000\n[set]\n{sets}\n'
    )
    code, _, stderr = run_cli(["sweep", str(spec), "--dry-run"], monkeypatch, capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert "CartPole-v1 / paper: kfac.async_inverse=true needs" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


# --------------------------------------------------------------------------------------------
# every key has one domain, and everything the project ships lies inside it


def test_every_leaf_has_a_domain_and_numbers_declare_theirs():
    hints = leaf_keys()
    domains = leaf_domains()
    assert set(domains) == set(hints) and len(domains) >= 60
    assert all(d is not None for d in domains.values())
    for key, tp in hints.items():
        if tp in (int, float, int | None, float | None) or key == "policy.hidden":
            assert not isinstance(domains[key], Choices), key  # declared, not derived


def test_defaults_and_every_preset_on_every_family_are_in_domain():
    check_domains(RunConfig(env="CartPole-v1"))
    envs = {
        "classic": "CartPole-v1",
        "generic": "Pendulum-v1",
        "continuous": "Hopper-v5",
        "minatar": "MinAtar/Breakout-v1",
        "atari": "ALE/Pong-v5",
    }
    assert set(envs) == set(FAMILY_BASE)
    for env in [*envs.values(), "Acrobot-v1"]:
        build_config(env)
        for name in PRESETS:
            build_config(env, preset=name)
    build_config("MinAtar/Breakout-v1", overrides=FAST)  # the benchmarks' fast setting


def test_seed_bound():
    assert build_config("CartPole-v1", seed=MAX_SEED).seed == MAX_SEED
    with pytest.raises(ConfigError, match=r"^seed: 1000000000 is not allowed"):
        build_config("CartPole-v1", seed=MAX_SEED + 1)


def test_largest_seed_still_seeds_ale_after_many_resumes():
    """MAX_SEED's reason: env i of reset r gets seed + i + 1_000_003·r and ale-py takes int32."""
    pytest.importorskip("ale_py")
    from kfac_bench.rl.envs import make_env

    env = make_env("ALE/Pong-v5", 2)
    try:
        env.reset(MAX_SEED + 1_000_003 * 1000)
    finally:
        env.close()


def test_presets_keys_lists_every_domain(monkeypatch, capsys):
    code, stdout, _ = run_cli(["presets", "--keys"], monkeypatch, capsys)
    assert code == 0
    lines = {line.split()[0]: line for line in stdout.splitlines()}
    domains = leaf_domains()
    assert set(lines) == set(domains)
    for key, domain in domains.items():
        assert domain.describe() in lines[key], key
    assert lines["kfac.damping"].endswith("a finite number > 0")
    assert lines["rollout.gae_lambda"].endswith("a number in [0, 1], or null")
    assert lines["seed"].endswith("set with --seed (it names the run: never --set)")


# --------------------------------------------------------------------------------------------
# the domain classes, at their boundaries

INF, NAN = math.inf, math.nan
DOMAIN_CASES = [
    (Positive(), [5e-324, 1e-300, 1, 1e308], [0, 0.0, -0.0, -1e-300, INF, NAN, True, "1", None]),
    (Positive(10), [10, 9.999, 1e-9], [10.000001, 11, INF]),
    (NonNegative(), [0, -0.0, 1e-300, 7], [-1e-300, -1, INF, NAN, False]),
    (Probability(), [0, 0.0, 0.5, 1, 1.0], [-1e-12, 1.0000001, 2, NAN, INF]),
    (Probability(below_one=True), [0, 0.999999], [1, 1.0, -0.1, NAN]),
    (Fraction(), [1e-12, 0.25, 1.0], [0, 0.0, 1.000001, NAN]),
    (Finite(), [-1e308, 0, 1e308], [INF, -INF, NAN, "0"]),
    (AtLeast(1), [1, 2, 10**30], [0, -1, 1.0, 1.5, True, INF, NAN, "1"]),
    (AtLeast(0, 9), [0, 9], [-1, 10, 9.0]),
    (Choices(("a", "b")), ["a", "b"], ["c", "A", None, 1]),
    (Choices((True, False)), [True, False], [1, 0, "true", None]),
    (Each(AtLeast(1)), [[], [1], (64, 64)], [[1, 0], [1.0], "ab", 3]),
    (Identity("--env", "a Gymnasium id"), ["CartPole-v1", ""], [3, None]),
]


@pytest.mark.parametrize(("domain", "inside", "outside"), DOMAIN_CASES)
def test_domain_boundaries(domain, inside, outside):
    for value in inside:
        assert domain.allows(value), value
        domain.check("k", value)
    for value in outside:
        assert not domain.allows(value), value
        with pytest.raises(ConfigError, match=r"^k: .* is not allowed \(must be .*\)$"):
            domain.check("k", value)


@pytest.mark.parametrize(
    ("domain", "text"),
    [
        (Positive(), "a finite number > 0"),
        (Positive(1e6), "a number in (0, 1000000]"),
        (NonNegative(), "a finite number >= 0"),
        (Probability(), "a number in [0, 1]"),
        (Probability(below_one=True), "a number in [0, 1)"),
        (Fraction(), "a number in (0, 1]"),
        (Finite(), "a finite number"),
        (AtLeast(1), "an integer >= 1"),
        (AtLeast(0, 1024), "an integer in [0, 1024]"),
        (Choices(("x", "y")), "one of 'x', 'y'"),
        (Choices((True, False)), "true or false"),
        (Each(AtLeast(1)), "a list, each an integer >= 1"),
    ],
)
def test_domain_descriptions(domain, text):
    assert domain.describe() == text


def test_check_names_key_value_and_range():
    with pytest.raises(ConfigError) as info:
        Positive().check("kfac.damping", INF)
    assert str(info.value) == "kfac.damping: inf is not allowed (must be a finite number > 0)"
