"""Tracking (kfac_bench.tracking): TensorBoard events and W&B runs carry the CSVs' rows.

Oracle: the run's own ``updates.csv`` / ``episodes.csv`` (the record, DESIGN.md §5). Event files
are read back with TensorBoard's ``EventAccumulator`` (every scalar kept: ``size_guidance`` 0) and
every (step, value) pair of every tag must equal the CSV column's non-empty cells, in order, as
float32 (TensorBoard's ``simple_value``). Runs are CartPole, a few hundred steps.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kfac_bench import store, tracking
from kfac_bench import tracking_availability as availability
from kfac_bench.config import ConfigError
from kfac_bench.presets import build_config
from kfac_bench.rl.trainer import train
from kfac_bench.tracking.tensorboard_log import cut_events, event_files

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator

REPO = Path(__file__).resolve().parents[1]
# 4 envs × 16 steps = 64 env steps per update; a row every update, a checkpoint every 3
BASE = {
    "rollout.n_envs": 4,
    "rollout.n_steps": 16,
    "log.update_every": 1,
    "log.checkpoint_every": 3,
    "torch_threads": 1,
}


def config(steps: int = 640, **sets):
    overrides = {**BASE, **{k.replace("__", "."): v for k, v in sets.items()}}
    return build_config(
        "CartPole-v1", variant="paper", seed=3, total_steps=steps, overrides=overrides
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def accumulate(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalar_pairs(acc: EventAccumulator, tag: str) -> list[tuple[int, np.float32]]:
    return [(e.step, np.float32(e.value)) for e in acc.Scalars(tag)]


def csv_pairs(rows: list[dict[str, str]], column: str) -> list[tuple[int, np.float32]]:
    return [(int(r["step"]), np.float32(float(r[column]))) for r in rows if r[column] != ""]


def assert_events_equal_csvs(run_dir: Path, acc: EventAccumulator | None = None) -> int:
    """Every tag equals its CSV column at the same steps; returns the number of pairs checked."""
    acc = acc or accumulate(run_dir)
    updates = read_csv(run_dir / "updates.csv")
    episodes = read_csv(run_dir / "episodes.csv")
    checked = 0
    expected_tags = set()
    for column in updates[0]:
        if column == "step":
            continue
        want = csv_pairs(updates, column)
        if not want:
            continue
        tag = tracking.update_tag(column)
        expected_tags.add(tag)
        assert scalar_pairs(acc, tag) == want, tag
        checked += len(want)
    for column, tag in tracking.EPISODE_TAGS.items():
        want = csv_pairs(episodes, column)
        expected_tags.add(tag)
        assert scalar_pairs(acc, tag) == want, tag
        checked += len(want)
    assert set(acc.Tags()["scalars"]) == expected_tags  # nothing else, nothing missing
    return checked


def test_every_update_column_has_a_tag():
    assert set(tracking.UPDATE_TAGS) == set(store.UPDATE_COLUMNS) - {"step"}
    assert tracking.update_tag("diag/trunk.0/A_trace") == "diag/trunk.0/A_trace"
    assert tracking.UPDATE_TAGS["nu"] == "kfac/nu" and tracking.UPDATE_TAGS["kl"] == "kfac/kl"
    with pytest.raises(KeyError, match="'bogus' has no tracking tag"):
        tracking.update_tag("bogus")


def test_scalars_skip_empty_cells_and_step():
    row = {"step": 64, "wall_time": 0.5, "nu": None, "kl": 0.25, "diag/fc/A_trace": 2.0, "x": 1}
    assert tracking.scalars(row, None) == {
        "charts/wall_time": 0.5,
        "kfac/kl": 0.25,
        "diag/fc/A_trace": 2.0,
    }
    episode = {"step": 64, "wall_time": 0.5, "return": 12.0, "length": 12}
    assert tracking.scalars(episode, tracking.EPISODE_TAGS) == {
        "charts/episodic_return": 12.0,
        "charts/episodic_length": 12.0,
    }


def test_event_scalars_equal_the_csvs(tmp_path):
    run_dir = tmp_path / "run"
    result = train(config(log__tensorboard=True), run_dir)
    assert result.state == "done"
    assert len(event_files(run_dir)) == 1
    acc = accumulate(run_dir)
    checked = assert_events_equal_csvs(run_dir, acc)
    updates = read_csv(run_dir / "updates.csv")
    assert len(updates) == 10 and checked > 10 * 20  # losses, kfac/*, diag/* on every row
    assert len(read_csv(run_dir / "episodes.csv")) > 5
    # the x axis is env steps: 64 per update
    assert [e.step for e in acc.Scalars("kfac/nu")] == [64 * k for k in range(1, 11)]
    # config as text and as HParams
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| variant | `paper` |" in text and "| log.tensorboard | `True` |" in text
    assert "| rollout.n_envs | `4` |" in text
    assert "_hparams_/experiment" in acc.summary_metadata or any(
        "_hparams_" in t for t in acc.Tags()["tensors"]
    )


def interrupted_run(run_dir: Path, cfg, stop_at_update: int) -> None:
    """Train until ``stop_at_update`` updates are logged, then stop as a Ctrl-C would (status
    stays running; the checkpoint is older than the last rows)."""

    def on_progress(p) -> None:
        if p.steps >= 64 * stop_at_update:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, on_progress=on_progress)


def test_resume_cuts_events_back_to_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(log__tensorboard=True)
    interrupted_run(run_dir, cfg, stop_at_update=5)  # checkpoint at update 3 (step 192)
    live = accumulate(run_dir)  # a TensorBoard watching the run before the resume
    assert [e.step for e in live.Scalars("kfac/nu")] == [64, 128, 192, 256, 320]
    assert store.read_status(run_dir).steps == 192
    episodes_before = scalar_pairs(live, "charts/episodic_return")
    assert any(step > 192 for step, _ in episodes_before)  # the cut below has work to do

    assert train(cfg, run_dir).state == "done"
    assert len(event_files(run_dir)) == 2  # one file per session
    fresh = accumulate(run_dir)
    steps = [e.step for e in fresh.Scalars("kfac/nu")]
    assert steps == [64 * k for k in range(1, 11)]  # 256 and 320 once, from the second session
    assert_events_equal_csvs(run_dir, fresh)
    # the config text is written once, by the first session
    assert len(fresh.Tensors("config/text_summary")) == 1
    # the watching TensorBoard sees the new file's SessionLog.START at 193 and purges its copies
    live.Reload()
    assert_events_equal_csvs(run_dir, live)
    # and the old file itself holds nothing beyond the checkpoint any more
    first = EventAccumulator(str(event_files(run_dir)[0]), size_guidance={"scalars": 0})
    first.Reload()
    assert max(e.step for e in first.Scalars("kfac/nu")) == 192


def test_resume_after_sigkill_does_not_duplicate_steps(tmp_path):
    """A real kill: the child process dies with SIGKILL after the 5th update (checkpoint at 3)."""
    run_dir = tmp_path / "run"
    code = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_tracking import config\n"
        "from kfac_bench.rl.trainer import train\n"
        "def on_progress(p):\n"
        "    if p.steps >= 320:\n"
        "        import time; time.sleep(0.2)\n"  # let the writer thread reach the file
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"train(config(log__tensorboard=True, log__update_every=1), {str(run_dir)!r}, on_progress=on_progress)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert store.read_status(run_dir).steps == 192
    assert train(config(log__tensorboard=True), run_dir).state == "done"
    acc = accumulate(run_dir)
    assert [e.step for e in acc.Scalars("kfac/nu")] == [64 * k for k in range(1, 11)]
    assert_events_equal_csvs(run_dir, acc)


def test_fresh_start_removes_old_events(tmp_path):
    """Killed before its first checkpoint: the run starts over (store.begin deletes the CSVs) and
    so do its events."""
    run_dir = tmp_path / "run"
    cfg = config(log__tensorboard=True, log__checkpoint_every=50)
    interrupted_run(run_dir, cfg, stop_at_update=2)
    assert not (run_dir / "checkpoint.pt").exists() and len(event_files(run_dir)) == 1
    assert train(cfg, run_dir).state == "done"
    assert len(event_files(run_dir)) == 1
    assert_events_equal_csvs(run_dir)


def _record(step: int) -> bytes:
    from tensorboard.compat.proto import event_pb2

    event = event_pb2.Event(step=step, wall_time=float(step))
    event.summary.value.add(tag="x", simple_value=float(step) / 2)
    return event.SerializeToString()


def test_cut_events_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_tail(tmp_path):
    from tensorboard.summary.writer.record_writer import RecordWriter

    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    for step in [0, 5, 10, 15, 10, 20]:
        writer.write(_record(step))
    whole = buffer.getvalue()
    torn = io.BytesIO()
    RecordWriter(torn).write(_record(25))
    path = tmp_path / "events.out.tfevents.1.host.1.1"
    path.write_bytes(whole + torn.getvalue()[:-3])  # a kill inside the last write
    assert cut_events(path, 10) == {"x"}
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(0, 0), (5, 2.5), (10, 5), (10, 5)]
    before = path.read_bytes()
    cut_events(path, 10)  # nothing left to cut: the file is left alone
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# availability: one clear line, nothing written


def test_missing_wandb_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    assert not availability.package_available("wandb")
    with pytest.raises(ConfigError) as info:
        config(log__wandb="offline")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("log.wandb=offline needs the wandb package, which is not installed")
    assert "pip install wandb" in message and "log.wandb=off" in message

    from kfac_bench.cli import main

    out = tmp_path / "run"
    argv = ["train", "--env", "CartPole-v1", "--steps", "64", "--no-progress"]
    code = main([*argv, "--set", "log.wandb=offline", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs the wandb package" in err[0]
    assert not out.exists()


def test_missing_tensorboard_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"^log\.tensorboard=true needs the tensorboard package"):
        config(log__tensorboard=True)


def test_online_without_a_key_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(availability, "package_available", lambda name: True)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ConfigError, match=r"^log\.wandb=online needs a W&B API key"):
        config(log__wandb="online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert config(log__wandb="online").log.wandb == "online"


def test_unknown_wandb_mode_names_the_choices():
    with pytest.raises(
        ConfigError, match=r"log\.wandb: 'yes' is not one of 'off', 'offline', 'online'"
    ):
        config(log__wandb="yes")


def test_tracking_keys_do_not_count_as_drift(tmp_path):
    """Turning TensorBoard on for an unfinished run resumes it (the keys change no result)."""
    run_dir = tmp_path / "run"
    interrupted_run(run_dir, config(), stop_at_update=4)
    assert store.config_drift(run_dir, config(log__tensorboard=True)) == []
    assert train(config(log__tensorboard=True), run_dir).state == "done"
    acc = accumulate(run_dir)
    assert [e.step for e in acc.Scalars("kfac/nu")] == [64 * k for k in range(4, 11)]


# ---------------------------------------------------------------------------------------------
# W&B offline (skipped where wandb is not installed; CI has no wandb)


def test_wandb_offline_writes_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from kfac_bench.tracking.wandb_log import run_id

    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "sweep" / "run"
    cfg = config(steps=384, log__wandb="offline")
    interrupted_run(run_dir, cfg, stop_at_update=4)  # checkpoint at update 3
    assert train(cfg, run_dir).state == "done"
    rid = run_id(run_dir)
    runs = sorted((run_dir / "wandb").glob(f"offline-run-*-{rid}"))
    assert len(runs) == 2  # one per session, the same W&B run id
    history = []
    for run in runs:
        assert (run / f"run-{rid}.wandb").stat().st_size > 0
        history += wandb_history(run / f"run-{rid}.wandb")
    # every CSV row once, in order, exactly (W&B keeps the float64 the CSV's repr round-trips)
    updates = read_csv(run_dir / "updates.csv")
    episodes = read_csv(run_dir / "episodes.csv")
    want = []
    for row in sorted(
        [("u", r) for r in updates] + [("e", r) for r in episodes],
        key=lambda item: (int(item[1]["step"]), item[0] == "u"),  # episodes before their update
    ):
        kind, cells = row
        tags = tracking.EPISODE_TAGS if kind == "e" else None
        values = {
            c: float(v) for c, v in cells.items() if v != "" and c != "step" and c != "wall_time"
        }
        if kind == "u":
            values["wall_time"] = float(cells["wall_time"])
        want.append({"global_step": int(cells["step"]), **tracking.scalars(values, tags)})
    got = [{k: v for k, v in r.items() if not k.startswith("_")} for r in history]
    assert [r["global_step"] for r in got] == [r["global_step"] for r in want]
    assert got == want
    assert max(r["global_step"] for r in wandb_history(runs[0] / f"run-{rid}.wandb")) == 192


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline ``.wandb`` file, read independently of wandb's writer: the
    file is a LevelDB-style log (7-byte file header ``:W&B`` + magic + version; 32 KiB blocks of
    records, each ``crc32 u32, length u16, type u8`` then data; types 1 full, 2 first, 3 middle,
    4 last), each record a ``wandb_internal_pb2.Record``."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, payloads, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        elif kind == 4:
            payloads.append(parts + chunk)
    rows = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# sweeps pass the options through


SWEEP = """
name = "tb"
variants = ["paper"]
controls = ["a2c"]
envs = ["CartPole-v1"]
seeds = [0]
steps = 512

[set]
"rollout.n_envs" = 4
"rollout.n_steps" = 16
"log.update_every" = 2
"log.tensorboard" = true
"""


def test_sweep_set_gives_every_run_its_events(tmp_path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    from kfac_bench import sweep

    spec = tmp_path / "tb.toml"
    spec.write_text(SWEEP)
    parser = __import__("argparse").ArgumentParser()
    sweep.add_arguments(parser)
    root = tmp_path / "out"
    args = parser.parse_args([str(spec), "--out", str(root), "--workers", "2", "--no-progress"])
    assert sweep.run(args) == 0
    names = {"paper__CartPole-v1__s0", "a2c__CartPole-v1__s0"}  # A2C: no kfac/nu cells
    for name in names:
        assert len(event_files(root / name)) == 1
        assert_events_equal_csvs(root / name)
    # `tensorboard --logdir <sweep>` sees one run per run directory, named by it
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(root))
    assert set(multiplexer.Runs()) == names


def test_sweep_with_wandb_missing_is_one_problem_line(tmp_path, monkeypatch):
    from kfac_bench.sweep import SpecError, load_spec, plan_runs

    monkeypatch.setitem(sys.modules, "wandb", None)
    spec = tmp_path / "wb.toml"
    spec.write_text(SWEEP.replace('"log.tensorboard" = true', '"log.wandb" = "offline"'))
    with pytest.raises(SpecError) as info:
        plan_runs(load_spec(spec))
    problems = info.value.problems
    assert len(problems) == 2  # one per (env, label), each one line
    assert all("log.wandb=offline needs the wandb package" in p for p in problems)
    assert not (tmp_path / "tb").exists()


def test_a_failing_wandb_init_is_one_line(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from kfac_bench.tracking.wandb_log import WandbInitError

    def refuse(**kwargs):
        raise wandb.errors.CommError("network is unreachable\n  more detail")

    monkeypatch.setattr(wandb, "init", refuse)
    run_dir = tmp_path / "run"
    with pytest.raises(WandbInitError) as info:
        train(config(log__wandb="offline"), run_dir)
    assert str(info.value) == "log.wandb=offline: wandb.init failed: network is unreachable"
    assert store.read_status(run_dir).state.value == "failed"  # recorded, as any failure
