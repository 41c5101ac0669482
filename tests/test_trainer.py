"""Trainer: returns by hand, the Fisher pass, determinism, resume, divergence, the real CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import variants
from kfac_bench import store
from kfac_bench.config import KfacConfig, PolicyConfig
from kfac_bench.curvature import KFAC
from kfac_bench.presets import build_config
from kfac_bench.rl import trainer as trainer_mod
from kfac_bench.rl.policies import build_policy
from kfac_bench.rl.returns import gae_advantages, nstep_returns

KFAC_BENCH = str(Path(sys.executable).with_name("kfac-bench"))

# --------------------------------------------------------------------------------------------
# returns by hand: T = 3 steps, N = 2 envs, γ = 0.5, λ = 0.5
#   env 0: r = 1, 2, 3; terminated at t=1 (so t=2 starts a new episode); V(s_3) = 4
#   env 1: r = 1, 1, 1; truncated at t=0 with V(final) = 10; V(s_3) = 2

R = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
TERM = torch.tensor([[False, False], [True, False], [False, False]])
TRUNC = torch.tensor([[False, True], [False, False], [False, False]])
FINAL = torch.tensor([[0.0, 10.0], [0.0, 0.0], [0.0, 0.0]])
LAST = torch.tensor([4.0, 2.0])
V = torch.tensor([[0.5, 1.0], [1.0, 2.0], [1.5, 3.0]])


def test_nstep_returns_by_hand():
    got = nstep_returns(R, TERM, TRUNC, FINAL, LAST, gamma=0.5)
    # env 0: R2 = 3 + .5·4 = 5; R1 = 2 (terminal); R0 = 1 + .5·2 = 2
    # env 1: R2 = 1 + .5·2 = 2; R1 = 1 + .5·2 = 2; R0 = 1 + .5·10 = 6 (bootstrap from final obs)
    torch.testing.assert_close(got, torch.tensor([[2.0, 6.0], [2.0, 2.0], [5.0, 2.0]]))


def test_gae_by_hand():
    adv, ret = gae_advantages(R, V, TERM, TRUNC, FINAL, LAST, gamma=0.5, lam=0.5)
    # env 0: δ2 = 3 + .5·4 − 1.5 = 3.5; δ1 = 2 − 1 = 1 (terminal); δ0 = 1 + .5·1 − .5 = 1
    #        A2 = 3.5; A1 = 1; A0 = 1 + .25·1 = 1.25
    # env 1: δ2 = 1 + .5·2 − 3 = −1; δ1 = 1 + .5·3 − 2 = .5; δ0 = 1 + .5·10 − 1 = 5 (truncated)
    #        A2 = −1; A1 = .5 + .25·(−1) = .25; A0 = 5 (chain cut at the truncation)
    want = torch.tensor([[1.25, 5.0], [1.0, 0.25], [3.5, -1.0]])
    torch.testing.assert_close(adv, want)
    torch.testing.assert_close(ret, want + V)


def test_gae_lambda_one_equals_nstep_returns():
    torch.manual_seed(0)
    values = torch.randn(3, 2)
    _, ret = gae_advantages(R, values, TERM, TRUNC, FINAL, LAST, gamma=0.9, lam=1.0)
    torch.testing.assert_close(ret, nstep_returns(R, TERM, TRUNC, FINAL, LAST, gamma=0.9))


# --------------------------------------------------------------------------------------------
# the Fisher pass


def test_fisher_pass_gradient_at_logits_is_onehot_minus_p():
    torch.manual_seed(0)
    policy = build_policy((4,), 3, PolicyConfig(arch="mlp"))
    kfac = KFAC(policy.kfac_module(), variants.get("paper"), KfacConfig(), lr=0.1)
    obs = torch.randn(7, 4)
    actions = torch.randint(0, 3, (7,))
    with kfac.capture.recording():
        logits, values = policy(obs)
        loss = trainer_mod.fisher_loss(logits, values, actions, 1.0, include_value=True)
        grads = kfac.capture.output_gradients(loss)
    per_example = 7 * grads["pi"]
    want = F.one_hot(actions, 3).float() - torch.softmax(logits, -1).detach()
    torch.testing.assert_close(per_example, want)


def test_extra_critic_steps_are_adam_on_the_value_loss(tmp_path):
    """fit_critic(k) = k Adam steps (recurrences written out here) on vf_coef·mean((V − R)²),
    gradients by autograd of that formula; the actor is not touched."""
    config = build_config(
        "CartPole-v1",
        overrides={"optim.critic": "separate-adam", "optim.critic_lr": 0.05, "loss.vf_coef": 0.7},
    )
    trainer = trainer_mod.Trainer(config, tmp_path / "run")
    policy = trainer.policy.double()  # float64 on both sides: the comparison is of formulas
    torch.manual_seed(1)
    obs, returns = torch.randn(24, 4, dtype=torch.float64), 5.0 * torch.randn(24).double()
    actor_before = [p.detach().clone() for p in policy.actor.parameters()]
    critic = [p.detach().clone() for p in policy.critic.parameters()]

    def value(params, x):  # the critic MLP 64-64 tanh written out
        w0, b0, w1, b1, w2, b2 = params
        h = torch.tanh(x @ w0.T + b0)
        h = torch.tanh(h @ w1.T + b1)
        return (h @ w2.T + b2).squeeze(-1)

    lr, (beta1, beta2), eps = 0.05, (0.9, 0.999), 1e-8
    m = [torch.zeros_like(p) for p in critic]
    v = [torch.zeros_like(p) for p in critic]
    for t in range(1, 4):
        params = [p.clone().requires_grad_(True) for p in critic]
        loss = 0.7 * (value(params, obs) - returns).pow(2).mean()
        grads = torch.autograd.grad(loss, params)
        for i, g in enumerate(grads):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            step = lr * (m[i] / (1 - beta1**t)) / ((v[i] / (1 - beta2**t)).sqrt() + eps)
            critic[i] = critic[i] - step

    trainer.rule.fit_critic(obs, returns, 3)
    for got, want in zip(policy.critic.parameters(), critic):
        torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)
    for got, want in zip(policy.actor.parameters(), actor_before):
        assert torch.equal(got.detach(), want)


# --------------------------------------------------------------------------------------------
# determinism, resume, divergence (in process, tiny budgets)


def tiny_config(steps=4096, **overrides):
    # pinned batch (16 envs × 16 steps = 256) so the checkpoint arithmetic below does not
    # depend on the tuned preset
    base = {
        "log.update_every": 2,
        "log.checkpoint_every": 3,
        "rollout.n_envs": 16,
        "rollout.n_steps": 16,
    }
    base.update(overrides)
    return build_config("CartPole-v1", seed=3, total_steps=steps, overrides=base)


def read_rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def episode_columns(path: Path, columns=("step", "return", "length")) -> list[tuple]:
    return [tuple(r[c] for c in columns) for r in read_rows(path)]


def test_same_seed_gives_identical_episodes(tmp_path):
    for name in ("a", "b"):
        result = trainer_mod.train(tiny_config(), tmp_path / name)
        assert result.state == "done"
    a, b = (
        episode_columns(tmp_path / "a/episodes.csv"),
        episode_columns(tmp_path / "b/episodes.csv"),
    )
    assert len(a) > 10
    assert a == b  # step, return and length byte-identical; only wall_time differs
    ua = [(r["update"], r["policy_loss"], r["nu"]) for r in read_rows(tmp_path / "a/updates.csv")]
    ub = [(r["update"], r["policy_loss"], r["nu"]) for r in read_rows(tmp_path / "b/updates.csv")]
    assert ua == ub


def test_resume_after_interruption_continues_the_curve(tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(steps=6144)
    calls = {"n": 0}

    def interrupt(progress):
        calls["n"] += 1
        if calls["n"] == 8:  # after the checkpoint at update 6, before the one at 9
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer_mod.train(config, run_dir, on_progress=interrupt)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "running"
    rows_before = read_rows(run_dir / "episodes.csv")
    assert int(rows_before[-1]["step"]) > 6 * 256  # rows beyond the checkpoint were written ...

    resumed = {}
    result = trainer_mod.train(config, run_dir, on_progress=lambda p: resumed.update(n=p.episodes))
    assert result.state == "done" and result.steps >= 6144
    episodes = read_rows(run_dir / "episodes.csv")
    steps = [int(r["step"]) for r in episodes]
    assert steps == sorted(steps)
    checkpoint_step = 6 * 256
    kept = [r for r in episodes if int(r["step"]) <= checkpoint_step]
    assert kept == [r for r in rows_before if int(r["step"]) <= checkpoint_step]  # exact prefix
    # every later row comes from the resumed session: the tail written before the interruption
    # was cut back, so nothing is duplicated, and every episode the resumed session finished is there
    assert len(episodes) - len(kept) == resumed["n"]
    updates = [int(r["update"]) for r in read_rows(run_dir / "updates.csv")]
    assert updates == list(range(2, 25, 2))
    # a finished run is left alone
    assert trainer_mod.train(config, run_dir).state == "already-done"


def test_divergence_is_recorded_not_crashed(tmp_path, monkeypatch):
    real_make_env = trainer_mod.make_env

    def poisoned(*args, **kwargs):
        env = real_make_env(*args, **kwargs)
        step = env.step

        def nan_step(actions):
            out = step(actions)
            out.reward = np.full_like(out.reward, np.nan)
            return out

        env.step = nan_step
        return env

    monkeypatch.setattr(trainer_mod, "make_env", poisoned)
    result = trainer_mod.train(tiny_config(), tmp_path / "run")
    assert result.state == "diverged"
    status = json.loads((tmp_path / "run/status.json").read_text())
    assert status["state"] == "diverged" and "non-finite loss at update 1" in status["error"]


def test_exception_is_recorded_as_failed(tmp_path, monkeypatch):
    config = tiny_config(**{"policy.arch": "nature-cnn"})  # incompatible with CartPole obs
    with pytest.raises(Exception):  # noqa: B017 - raised while building, before any write
        trainer_mod.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()

    def broken(self, *args, **kwargs):
        raise RuntimeError("update exploded")

    monkeypatch.setattr(trainer_mod.Trainer, "update", broken)
    with pytest.raises(RuntimeError):
        trainer_mod.train(tiny_config(), tmp_path / "run")
    status = json.loads((tmp_path / "run/status.json").read_text())
    assert status["state"] == "failed" and status["error"] == "RuntimeError: update exploded"


@pytest.mark.parametrize("async_staleness", [None, 2])
def test_updates_csv_logs_the_inverse_staleness(tmp_path, async_staleness):
    """inverse_staleness = updates since the statistics behind the decomposition in use: with
    inverse_every k, decompositions come from updates 0, k, 2k, …; a synchronous one is used at
    once, an asynchronous one from `async_staleness` updates later (the first is synchronous)."""
    every = 3
    extra = {"kfac.inverse_every": every, "log.update_every": 1}
    if async_staleness is not None:
        extra.update({"kfac.async_inverse": True, "kfac.async_staleness": async_staleness})
    trainer_mod.train(tiny_config(steps=256 * 8, **extra), tmp_path / "run")
    logged = [int(r["inverse_staleness"]) for r in read_rows(tmp_path / "run/updates.csv")]
    delay = async_staleness or 0
    want = []
    for i in range(8):  # update i + 1 uses the newest decomposition already installed
        installed = [s for s in range(0, i + 1, every) if s == 0 or s + delay <= i]
        want.append(i - max(installed))
    assert logged == want


def test_run_files_with_other_columns_are_refused(tmp_path):
    path = tmp_path / "updates.csv"
    path.write_text("step,wall_time,update\n256,0.1,1\n")
    with pytest.raises(ValueError, match="written with other columns"):
        store.CsvLog(path, store.UPDATE_COLUMNS)
    assert path.read_text() == "step,wall_time,update\n256,0.1,1\n"


def test_config_json_records_everything(tmp_path):
    trainer_mod.train(tiny_config(steps=512), tmp_path / "run")
    record = json.loads((tmp_path / "run/config.json").read_text())
    for key in ("label", "variant", "env", "seed", "preset", "axes", "config", "provenance"):
        assert key in record
    assert record["config"]["kfac"]["damping_mode"] == "eigen"
    assert set(record["provenance"]) >= {"git_commit", "git_dirty", "versions", "host", "device"}


@pytest.mark.parametrize("threads", [1, 2])
def test_config_json_records_the_thread_count_the_run_used(tmp_path, threads):
    """provenance.torch_threads is the count the trainer set from the config, not the count the
    process had before (the MinAtar and Atari families leave it at 0: torch's own)."""
    before = torch.get_num_threads()
    torch.set_num_threads(3 - threads)
    try:
        config = tiny_config(steps=256)
        config = dataclasses.replace(config, torch_threads=threads)
        trainer_mod.train(config, tmp_path / "run")
    finally:
        torch.set_num_threads(before)
    record = json.loads((tmp_path / "run/config.json").read_text())
    assert record["provenance"]["torch_threads"] == threads


# --------------------------------------------------------------------------------------------
# the real CLI in a subprocess


def cli(*args, timeout=240):
    return subprocess.run([KFAC_BENCH, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("env", "steps", "extra"),
    [
        ("CartPole-v1", 2048, []),
        ("MinAtar/Breakout-v1", 640, []),
        ("BreakoutNoFrameskip-v4", 320, ["--set", "rollout.n_envs=4"]),
        ("Pendulum-v1", 5000, []),  # the continuous family: Gaussian policy, 2500-step batches
        ("Hopper-v5", 2500, []),  # MuJoCo
    ],
)
def test_cli_trains_and_leaves_a_valid_run_directory(tmp_path, env, steps, extra):
    out = tmp_path / "run"
    proc = cli(
        "train", "--env", env, "--steps", str(steps), "--out", str(out), "--no-progress", *extra
    )
    assert proc.returncode == 0, proc.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done" and status["steps"] >= steps
    assert (out / "checkpoint.pt").exists()
    header = (out / "updates.csv").read_text().splitlines()[0].split(",")
    assert header[:12] == [
        "step", "wall_time", "update", "fps", "policy_loss", "value_loss", "entropy", "kl",
        "predicted_kl", "nu", "lr", "grad_norm",
    ]  # fmt: skip
    assert (out / "episodes.csv").read_text().startswith("step,wall_time,return,length")
    assert json.loads((out / "config.json").read_text())["env"] == env
    again = cli(
        "train", "--env", env, "--steps", str(steps), "--out", str(out), "--no-progress", *extra
    )
    assert again.returncode == 0 and "already finished" in again.stdout


def test_cli_play_writes_a_gif(tmp_path):
    out = tmp_path / "run"
    assert (
        cli(
            "train", "--env", "CartPole-v1", "--steps", "512", "--out", str(out), "--no-progress"
        ).returncode
        == 0
    )
    proc = cli("play", str(out), "--episodes", "1", "--gif", str(tmp_path / "ep.gif"))
    assert proc.returncode == 0, proc.stderr
    assert "episode 1: return" in proc.stdout
    assert (tmp_path / "ep.gif").read_bytes()[:6] == b"GIF89a"


def test_cli_play_gif_on_mujoco_renders_offscreen_or_says_why_not(tmp_path):
    """Headless (no DISPLAY, no MUJOCO_GL), play picks EGL: a GIF where an EGL library exists,
    else one error line naming MUJOCO_GL. A bad MUJOCO_GL is one error line too."""
    out = tmp_path / "run"
    trained = cli(
        "train", "--env", "Hopper-v5", "--steps", "100", "--out", str(out), "--no-progress"
    )
    assert trained.returncode == 0, trained.stderr
    headless = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL")}
    gif = tmp_path / "ep.gif"
    proc = subprocess.run(
        [KFAC_BENCH, "play", str(out), "--episodes", "1", "--gif", str(gif)],
        capture_output=True, text=True, timeout=240, env=headless,
    )  # fmt: skip
    if proc.returncode == 0:
        assert gif.read_bytes()[:6] == b"GIF89a"
    else:
        assert "MUJOCO_GL" in proc.stderr.strip().splitlines()[-1] and not gif.exists()
    bad = subprocess.run(
        [KFAC_BENCH, "play", str(out), "--episodes", "1", "--gif", str(tmp_path / "bad.gif")],
        capture_output=True, text=True, timeout=240, env={**headless, "MUJOCO_GL": "bogus"},
    )  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "MUJOCO_GL=bogus" in bad.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "CartPol-v1"], "CartPol-v1"),
        (["--env", "Blackjack-v1"], "Tuple observation space"),
        (
            ["--env", "CartPole-v1", "--variant", "nope"],
            "unknown variant 'nope'; valid variants: paper",
        ),
        (
            ["--env", "CartPole-v1", "--set", "kfac.dampnig=0.1"],
            "unknown config key 'kfac.dampnig'",
        ),
        (
            ["--env", "CartPole-v1", "--set", "kfac.damping=abc"],
            "kfac.damping: 'abc' has the wrong type",
        ),
        (["--env", "CartPole-v1", "--set", "kfac.damping_mode=exact"], "is not one of 'eigen'"),
        (["--env", "CartPole-v1", "--set", "nokey"], "--set expects key=value"),
        (
            ["--env", "CartPole-v1", "--set", "optim.critic_steps=0"],
            "optim.critic_steps: 0 is not allowed (must be an integer >= 1)",
        ),
        (
            ["--env", "CartPole-v1", "--preset", "a2c", "--set", "optim.critic_steps=2"],
            "optim.critic_steps > 1 needs optim.algo='acktr'",
        ),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, args, message):
    proc = cli("train", *args, "--out", str(tmp_path / "run"), "--steps", "256", timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kfac-bench: error:"), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cli_unknown_preset_lists_choices(tmp_path):
    proc = cli("train", "--env", "CartPole-v1", "--preset", "nope", timeout=60)
    assert proc.returncode != 0 and "invalid choice: 'nope'" in proc.stderr
    assert "openai-baselines" in proc.stderr


def test_cli_lists_variants_and_presets():
    out = cli("variants", timeout=60).stdout.splitlines()
    assert [line.split()[0] for line in out] == variants.names()
    presets = cli("presets", timeout=60).stdout
    for name in (
        "openai-baselines",
        "stable-baselines",
        "ikostrikov",
        "acktr-pytorch",
        "kfac-pytorch",
        "notebook",
        "a2c",
    ):
        assert name in presets
