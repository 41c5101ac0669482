"""The sweep runner: spec validation, a tiny sweep end to end, failure isolation, kill and
resume, the Ray backend, and the shipped specs (``runs/*.toml``) under ``--dry-run``.

Budgets are tiny (CartPole, a few thousand steps); each test that trains starts real worker
processes, so the whole file stays well under a minute and a half on two cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from kfac_bench import config as config_mod
from kfac_bench import store, sweep
from kfac_bench.presets import PRESETS
from kfac_bench.sweep import SpecError, load_spec, plan_runs, planned_steps, scheduler

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "runs").glob("*.toml"))


def write_spec(tmp_path: Path, text: str, name: str = "s") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert not (tmp_path / "s").exists()  # nothing written
    return info.value.problems


def one(problems: list[str], *needles: str) -> str:
    """The single problem line that contains every needle."""
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, (needles, problems)
    return hits[0]


BASE = 'envs = ["CartPole-v1"]\nseeds = [0]\n'


# ---------------------------------------------------------------------------------------------
# validation: one test per kind of problem


def test_bad_toml_reports_line_and_column(tmp_path):
    problems = problems_of(tmp_path, 'variants = ["paper"]\nenvs = ["CartPole-v1"\nseeds = 1\n')
    line = one(problems, "invalid TOML")
    assert "line 3" in line and "column" in line


def test_unknown_top_level_key(tmp_path):
    problems = problems_of(tmp_path, BASE + 'variant = ["paper"]\nsteps = 100\n')
    line = one(problems, "unknown key 'variant'")
    assert "did you mean variants" in line and "valid keys: name, variants, controls" in line


def test_unknown_variant_lists_the_valid_ones(tmp_path):
    line = one(problems_of(tmp_path, BASE + 'variants = ["papr", "baselines"]\n'), "papr")
    assert "unknown variant 'papr'" in line and "did you mean paper" in line
    assert "valid variants: paper, baselines, kfac-pytorch, ikostrikov, kfac-reduce" in line


def test_unknown_or_non_control_preset_in_controls(tmp_path):
    problems = problems_of(tmp_path, BASE + 'controls = ["a2cc", "openai-baselines"]\n')
    assert "valid controls: a2c" in one(problems, "unknown control preset 'a2cc'")
    assert "not a first-order control" in one(problems, "'openai-baselines'")


def test_unknown_env_and_unsupported_env(tmp_path):
    problems = problems_of(
        tmp_path, 'variants = ["paper"]\nseeds = 1\nenvs = ["CartPol-v1", "Blackjack-v1"]\n'
    )
    assert "did you mean CartPole-v1" in one(problems, "unknown environment id 'CartPol-v1'")
    assert "only Box observations" in one(problems, "Blackjack-v1", "Tuple observation space")


def test_unknown_preset(tmp_path):
    line = one(
        problems_of(tmp_path, BASE + 'variants = ["paper"]\npreset = "baseline"\n'), "preset"
    )
    assert "unknown preset 'baseline'" in line and "openai-baselines" in line
    assert "valid presets: classic-tuned, minatar-tuned, atari-tuned, openai-baselines" in line


def test_unknown_config_keys_in_set_and_grid(tmp_path):
    problems = problems_of(
        tmp_path,
        BASE + 'variants = ["paper"]\n[set]\n"kfac.dampin" = 0.1\nseed = 3\n'
        '[grid]\n"rollout.nenvs" = [4, 8]\n',
    )
    assert "did you mean kfac.damping" in one(problems, "[set]", "unknown config key 'kfac.dampin'")
    assert "rollout.n_envs" in one(problems, "[grid]", "unknown config key 'rollout.nenvs'")
    assert "seeds" in one(problems, "[set] 'seed'")


def test_wrong_value_types_in_set_and_grid(tmp_path):
    problems = problems_of(
        tmp_path,
        BASE + 'variants = ["paper"]\n[set]\n"kfac.damping" = "high"\n'
        '[grid]\n"kfac.damping_mode" = ["eigen", "cholesky"]\n"log.update_every" = 5\n',
    )
    assert "expected float" in one(problems, "kfac.damping: 'high' has the wrong type")
    line = one(problems, "'cholesky' is not one of")
    assert "'eigen', 'tikhonov', 'tikhonov-pi'" in line
    assert "must be a list" in one(problems, "'log.update_every'")


def test_empty_lists_and_axes(tmp_path):
    problems = problems_of(
        tmp_path, 'variants = []\nenvs = ["CartPole-v1"]\nseeds = 0\n[grid]\n"kfac.damping" = []\n'
    )
    one(problems, "`variants` is empty")
    one(problems, "`seeds` = 0")
    one(problems, "'kfac.damping' is an empty axis")


def test_duplicate_runs(tmp_path):
    problems = problems_of(
        tmp_path,
        'variants = ["paper", "paper"]\nenvs = ["CartPole-v1"]\nseeds = [0, 1, 0]\n'
        '[grid]\n"kfac.damping" = [0.01, 0.01]\n',
    )
    one(problems, "`variants`: 'paper' is listed twice (duplicate runs)")
    one(problems, "`seeds`: 0 is listed twice")
    one(problems, "[grid] 'kfac.damping': 0.01 is listed twice")


def test_env_tables_must_name_listed_envs(tmp_path):
    problems = problems_of(
        tmp_path,
        BASE + 'variants = ["paper"]\n[steps_per_env]\n"Acrobot-v1" = 10\n'
        '[thresholds]\n"CartPole-v1" = "high"\n',
    )
    assert "envs: CartPole-v1" in one(problems, "[steps_per_env] 'Acrobot-v1' is not in `envs`")
    one(problems, "[thresholds] 'CartPole-v1': expected a number")


def test_cli_prints_every_problem_and_starts_nothing(tmp_path, capsys):
    spec = write_spec(
        tmp_path, 'variants = ["papr"]\nenvs = ["CartPol-v1"]\nseeds = [1, 1]\nsteps = "lots"\n'
    )
    assert sweep.run(parse(spec)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("kfac-bench: error: ") for line in err)
    assert not (tmp_path / "s").exists()


def test_control_runs_layering_and_kfac_axes(tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path,
            'variants = ["paper"]\ncontrols = ["a2c"]\nenvs = ["CartPole-v1"]\nseeds = 2\n'
            'steps = 5000\n[set]\n"optim.lr" = 0.1\n"rollout.n_envs" = 4\n'
            '[grid]\n"kfac.damping_mode" = ["eigen", "tikhonov"]\n"loss.ent_coef" = [0.0, 0.01]\n',
        )
    )
    names = [r.name for r in plan_runs(spec)]
    assert len(names) == len(set(names)) == 2 * 4 + 2 * 2  # controls skip the kfac axis
    a2c = [r for r in plan_runs(spec) if r.label == "a2c"]
    assert {tuple(r.axes) for r in a2c} == {("loss.ent_coef",)}
    c, a2c_lr = a2c[0].config, PRESETS["a2c"].values["optim.lr"]
    # the control's own batch (rl-zoo CartPole: 8 envs) wins over [set], as its lr does
    assert (c.optim.algo, c.preset, c.optim.lr, c.rollout.n_envs) == ("a2c", "a2c", a2c_lr, 8)
    # the control names its own returns (n-step), not the family default's GAE 0.98
    assert PRESETS["classic-tuned"].values["rollout.gae_lambda"] == 0.98
    assert c.rollout.gae_lambda is None
    paper = next(r for r in plan_runs(spec) if r.label == "paper")
    assert (paper.config.optim.lr, paper.config.total_steps) == (0.1, 5000)
    assert paper.name == "paper__CartPole-v1__s0__damping_mode-eigen__ent_coef-0.0"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_specs_validate_in_a_dry_run(path, tmp_path, capsys):
    assert sweep.run(parse(path, "--dry-run", "--out", tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "to run" in out and not (tmp_path / "out").exists()
    spec = load_spec(path)
    for run in plan_runs(spec):  # controls too: the base preset's own budget must not win
        assert run.config.total_steps == spec.steps_per_env.get(run.env, spec.steps), run.name


def test_shipped_specs_exist():
    assert {p.stem for p in SHIPPED} >= {"quick", "damping", "minatar", "atari"}


# ---------------------------------------------------------------------------------------------
# running


TINY = """
variants = ["paper", "baselines"]
envs = ["CartPole-v1"]
seeds = 2
steps = 2000
[set]
"log.checkpoint_every" = 2
"log.update_every" = 2
[thresholds]
"CartPole-v1" = 195.0
"""


def test_tiny_sweep_end_to_end_waits_for_a_locked_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(scheduler, "LOCK_RETRY_S", (0.2, 0.5))
    deferred = threading.Event()
    probe = store.lock_holder

    def lock_holder(run_dir):
        holder = probe(run_dir)
        if holder is not None:
            deferred.set()
        return holder

    monkeypatch.setattr(scheduler, "lock_holder", lock_holder)
    spec = write_spec(tmp_path, TINY, "tiny")
    final = planned_steps(plan_runs(load_spec(spec))[0].config)
    root = tmp_path / "tiny"
    locked = root / "baselines__CartPole-v1__s1"
    lock = store.RunLock(locked)
    assert lock.acquire() is None  # someone else writes this run for now
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(rc=sweep.run(parse(spec, "--workers", "2", "--no-progress")))
    )
    thread.start()
    try:
        assert deferred.wait(timeout=60), "the sweep never met the locked run"
        assert not (locked / "status.json").exists()  # it waits, it does not write concurrently
    finally:
        lock.release()
        thread.join(timeout=60)
    assert result["rc"] == 0
    out = capsys.readouterr().out
    assert "locked by another process" in out
    index = store.read_json(root / "sweep.json")
    assert index["name"] == "tiny" and index["thresholds"] == {"CartPole-v1": 195.0}
    assert index["spec"]["variants"] == ["paper", "baselines"] and len(index["spec_hash"]) == 16
    assert [r["state"] for r in index["runs"]] == ["done"] * 4
    assert {r["name"] for r in index["runs"]} == {
        f"{v}__CartPole-v1__s{s}" for v in ("paper", "baselines") for s in (0, 1)
    }
    for entry in index["runs"]:
        run_dir = root / entry["name"]
        for name in ("config.json", "episodes.csv", "updates.csv", "status.json", "train.log"):
            assert (run_dir / name).is_file(), (run_dir, name)
        assert entry["steps"] == final and entry["error"] is None
        assert store.read_json(run_dir / "config.json")["variant"] == entry["variant"]
    # the summary table
    assert "run" in out and "state" in out and "4 done" in out
    assert f"baselines__CartPole-v1__s1  done   {final:,}" in out

    # A second run has nothing to do and says so.
    assert sweep.run(parse(spec, "--no-progress")) == 0
    assert "0 to run" in capsys.readouterr().out


FAILING = """
variants = ["paper"]
envs = ["CartPole-v1"]
seeds = [0]
steps = 3000
fidelity = true
[set]
"log.checkpoint_every" = 2
[grid]
"policy.arch" = ["mlp", "nature-cnn"]   # nature-cnn cannot take CartPole's (4,) observations
"""


def test_failed_runs_are_isolated_and_reported(tmp_path, capsys):
    spec = write_spec(tmp_path, FAILING, "failing")
    root = tmp_path / "failing"
    assert sweep.run(parse(spec, "--workers", "2", "--no-progress")) == 1
    captured = capsys.readouterr()
    index = {r["name"]: r for r in store.read_json(root / "sweep.json")["runs"]}
    bad = ["paper__CartPole-v1__s0__arch-nature-cnn"]
    good = ["paper__CartPole-v1__s0__arch-mlp"]
    for name in good:
        assert index[name]["state"] == "done"
        assert index[name]["fidelity"] == {"state": "done", "error": None}
        assert (root / name / "fidelity.csv").is_file()
    for name in bad:
        assert index[name]["state"] == "failed"
        assert "nature-cnn needs (C, H, W) observations" in index[name]["error"]
        status = store.read_json(root / name / "status.json")
        assert status["state"] == "failed" and "nature-cnn" in status["error"]
        assert "Traceback" in (root / name / "train.log").read_text()
        assert any(line.startswith(name) and "failed" in line for line in captured.out.splitlines())
    assert "1 done, 1 failed" in captured.out and "--retry-failed" in captured.err

    # Without --retry-failed the failed runs are reported again, not rerun.
    assert sweep.run(parse(spec, "--no-progress")) == 1
    out = capsys.readouterr().out
    assert "0 to run" in out and "1 done, 1 failed" in out
    assert sweep.run(parse(spec, "--dry-run", "--retry-failed")) == 0
    assert "(retry)" in capsys.readouterr().out


def test_changed_spec_is_reported_for_that_run_and_nothing_is_touched(tmp_path, capsys):
    spec = write_spec(tmp_path, BASE + 'variants = ["paper"]\nsteps = 1000\n', "changed")
    run = plan_runs(load_spec(spec))[0]
    run_dir = tmp_path / "changed" / run.name
    run_dir.mkdir(parents=True)
    other = plan_runs(
        load_spec(
            write_spec(
                tmp_path,
                BASE + 'variants = ["paper"]\nsteps = 1000\n[set]\n"kfac.damping" = 0.5\n',
            )
        )
    )[0]
    store.write_json(run_dir / "config.json", {"config": config_mod.to_dict(other.config)})
    store.write_json(run_dir / "status.json", {"state": "done", "steps": 1024, "error": None})
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert sweep.run(parse(spec, "--no-progress")) == 1
    captured = capsys.readouterr()
    wanted = run.config.kfac.damping
    assert f"config.json holds a run with a different config (kfac.damping: 0.5 -> {wanted!r})" in (
        captured.out
    )
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    entry = store.read_json(tmp_path / "changed" / "sweep.json")["runs"][0]
    assert entry["state"] == "failed"
    assert (
        f"(kfac.damping: 0.5 -> {wanted!r}); the spec (or a code default) changed"
        in (entry["error"])
    )
    assert "--retry-failed does not change that" in captured.err  # defect 14
    assert "rerun them with" not in captured.err


KILL = """
variants = ["paper", "baselines"]
envs = ["CartPole-v1"]
seeds = [0]
steps = 20_000
[set]
"log.checkpoint_every" = 5
"log.update_every" = 2
"""


def _checkpointed(run_dir: Path) -> bool:
    try:
        status = store.read_json(run_dir / "status.json")
    except (OSError, ValueError):
        return False
    return (run_dir / "checkpoint.pt").exists() and status.get("steps", 0) > 0


def test_killed_sweep_resumes_without_lost_or_duplicated_rows(tmp_path, capsys):
    spec = write_spec(tmp_path, KILL, "kill")
    root = tmp_path / "kill"
    config = plan_runs(load_spec(spec))[0].config
    final, n_envs = planned_steps(config), config.rollout.n_envs
    batch = n_envs * config.rollout.n_steps
    names = ["paper__CartPole-v1__s0", "baselines__CartPole-v1__s0"]
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kfac_bench.cli",
            "sweep",
            str(spec),
            "--workers",
            "2",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # the trainer renames checkpoint.pt into place, then rewrites status.json: wait for
            # both, so the kill cannot fall between them
            if all(_checkpointed(root / n) for n in names):
                break
            assert parent.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the runs never wrote a checkpoint")
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    # The orphaned workers notice and stop (releasing their locks), leaving resumable runs.
    deadline = time.monotonic() + 20
    while any(store.lock_holder(root / n) is not None for n in names):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)
    before = {}
    states = [store.read_json(root / n / "status.json")["state"] for n in names]
    assert "running" in states  # (a run may finish before the kill on a fast machine)
    for n in names:
        status = store.read_json(root / n / "status.json")
        assert status["state"] in ("running", "done") and 0 < status["steps"] <= final
        episodes = pd.read_csv(root / n / "episodes.csv")
        updates = pd.read_csv(root / n / "updates.csv")
        cut = status["steps"]
        before[n] = (cut, episodes[episodes.step <= cut], updates[updates.step <= cut])

    assert sweep.run(parse(spec, "--workers", "2", "--no-progress")) == 0
    capsys.readouterr()
    for n in names:
        status = store.read_json(root / n / "status.json")
        assert status["state"] == "done" and status["steps"] == final
        episodes = pd.read_csv(root / n / "episodes.csv")
        updates = pd.read_csv(root / n / "updates.csv")
        cut, episodes_before, updates_before = before[n]
        # rows up to the checkpoint survive unchanged; later rows start after it
        pd.testing.assert_frame_equal(episodes.iloc[: len(episodes_before)], episodes_before)
        pd.testing.assert_frame_equal(updates.iloc[: len(updates_before)], updates_before)
        assert (episodes.step.iloc[len(episodes_before) :] > cut).all()
        assert episodes.step.is_monotonic_increasing
        # (step, wall_time) never goes back: a replayed block would
        assert list(zip(episodes.step, episodes.wall_time)) == sorted(
            zip(episodes.step, episodes.wall_time)
        )
        assert (episodes.groupby("step").size() <= n_envs).all()  # ≤ one episode end per env
        assert list(updates["update"]) == list(range(2, final // batch + 1, 2))
        assert (updates.step == updates["update"] * batch).all()
        log = (root / n / "train.log").read_text()
        if "running" == states[names.index(n)]:
            assert log.count(" sweep 'kill': ") == 2 and "stopped" in log


def test_ray_backend_runs_the_tiny_sweep(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        log_to_driver=False,
    )
    try:
        spec = write_spec(tmp_path, TINY, "tiny")
        assert sweep.run(parse(spec, "--backend", "ray", "--workers", "2", "--no-progress")) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "(ray, 2 workers" in out and "4 done" in out
    index = store.read_json(tmp_path / "tiny" / "sweep.json")
    assert [r["state"] for r in index["runs"]] == ["done"] * 4
    for entry in index["runs"]:
        status = store.read_json(tmp_path / "tiny" / entry["name"] / "status.json")
        assert (status["state"], status["steps"]) == ("done", entry["steps"])
        assert entry["steps"] == planned_steps(plan_runs(load_spec(spec))[0].config)


def test_worker_killed_before_reporting_is_recorded_failed(tmp_path):
    spec = load_spec(write_spec(tmp_path, BASE + 'variants = ["paper"]\nsteps = 1000\n'))
    run = plan_runs(spec)[0]
    entry = sweep.inspect_run(run, tmp_path / "out" / run.name, retry_failed=False)
    backend = sweep.LocalBackend(workers=1, threads=1)
    backend.start(sweep.Task(run.name, str(entry.run_dir), run.config, {}, 1, False, "s"))
    process, _ = backend.procs[run.name]
    process.kill()
    events: list = []
    deadline = time.monotonic() + 30
    while not events and time.monotonic() < deadline:
        events = [e for e in backend.poll(0.2) if e[0] != "progress"]
    assert events == [
        (
            "died",
            run.name,
            "worker process killed by SIGKILL (out of memory?) before it reported a result",
        )
    ]
    index = sweep.Sweep(spec, tmp_path / "out", [entry], sweep.SweepOptions())
    index._settle_died(entry, events[0][2])
    status = store.read_json(entry.run_dir / "status.json")
    assert status["state"] == entry.state == "failed" and "SIGKILL" in status["error"]
    assert "SIGKILL" in (entry.run_dir / "train.log").read_text()


def test_missing_fidelity_module_is_recorded_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kfac_bench.fidelity", None)
    assert sweep.run_fidelity(tmp_path) == {"state": "failed", "error": sweep.FIDELITY_MISSING}
    spec = load_spec(
        write_spec(tmp_path, BASE + 'variants = ["paper"]\ncontrols = ["a2c"]\nfidelity = true\n')
    )
    entries = [sweep.inspect_run(r, tmp_path / r.name, retry_failed=False) for r in plan_runs(spec)]
    sweep.plan_fidelity(entries)
    by_label = {e.run.label: e for e in entries}
    assert by_label["paper"].fidelity == {"state": "failed", "error": sweep.FIDELITY_MISSING}
    assert by_label["a2c"].fidelity is None and all(e.todo for e in entries)
    assert "module missing" in sweep.FIDELITY_MISSING


def test_ctrl_c_stops_workers_and_leaves_resumable_runs(tmp_path, capsys):
    spec = write_spec(
        tmp_path,
        BASE + 'variants = ["paper"]\nsteps = 500_000\n[set]\n"log.checkpoint_every" = 5\n',
        "sigint",
    )
    run_dir = tmp_path / "sigint" / "paper__CartPole-v1__s0"

    def interrupt() -> None:
        deadline = time.monotonic() + 60
        while not _checkpointed(run_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does to the sweep process

    thread = threading.Thread(target=interrupt)
    thread.start()
    try:
        rc = sweep.run(parse(spec, "--no-progress"))
    finally:
        thread.join()
    assert rc == 130
    status = store.read_json(run_dir / "status.json")
    assert status["state"] == "running" and 0 < status["steps"] < 500_000
    assert store.read_json(tmp_path / "sigint" / "sweep.json")["runs"][0]["state"] == "running"
    assert "stopped (KeyboardInterrupt)" in (run_dir / "train.log").read_text()
    assert store.lock_holder(run_dir) is None  # the worker is gone
    assert "again to resume" in capsys.readouterr().err
