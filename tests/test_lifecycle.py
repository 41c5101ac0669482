"""The run directory's lifecycle under damage, faults and concurrent use (issue 12).

Each defect is reproduced through the command line (``kfac_bench.cli.main``, in-process where no
kill is needed) and checked for: one ``kfac-bench: error:`` line naming the file and what to do,
the exit code, and a directory left exactly as it was (or not created at all). The fault test
SIGKILLs ``train`` inside atomic writes and CSV appends and checks every episode row against an
independent oracle of where each episode must start.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from kfac_bench import atomic, cli, store

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--env", "CartPole-v1", "--steps", "2000", "--no-progress"]


def kfac(capsys, *argv: str) -> tuple[int, list[str], str]:
    """Run the CLI in-process: (exit code, stderr lines, stdout)."""
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines(), captured.out


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file's bytes (``.lock`` aside: it holds the pid of the last process that locked)."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.name != ".lock"}


def one_error(err: list[str], *needles: str) -> str:
    assert len(err) == 1 and err[0].startswith("kfac-bench: error: "), err
    assert all(n in err[0] for n in needles), (needles, err[0])
    return err[0]


@pytest.fixture
def finished(tmp_path, capsys) -> Path:
    """A run directory trained to ``done`` (2,048 steps)."""
    run_dir = tmp_path / "D"
    assert kfac(capsys, *TRAIN, "--out", run_dir)[0] == 0
    assert store.read_status(run_dir).state is store.RunState.DONE
    return run_dir


@pytest.fixture
def interrupted(finished) -> Path:
    """The same directory marked ``running``: the next ``train`` resumes from checkpoint.pt."""
    store.write_status(finished, store.RunStatus(store.RunState.RUNNING, 1024, None, 1.0))
    return finished


# ---------------------------------------------------------------------------------------------
# defect 4: corrupted state is one line naming the file; the directory is not touched


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("checkpoint.pt", b"", ("checkpoint.pt is empty", "delete checkpoint.pt")),
        ("checkpoint.pt", b"\x80\x02garbage", ("checkpoint.pt cannot be loaded",)),
        ("status.json", b"[1, 2]", ("status.json holds a JSON list, not an object",)),
        ("status.json", b'{"state": "runn', ("status.json is not valid JSON",)),
        ("status.json", b'{"state": "paused", "steps": 1}', ("status.json has state 'paused'",)),
        ("config.json", b'{"label": "paper", "con', ("config.json is not valid JSON",)),
        ("config.json", b"{}", ('config.json has no "config" object',)),
    ],
    ids=[
        "empty-ckpt",
        "garbage-ckpt",
        "status-list",
        "status-cut",
        "status-state",
        "config-cut",
        "config-empty",
    ],
)
def test_corrupted_file_is_one_line_naming_it(interrupted, capsys, name, content, needles):
    (interrupted / name).write_bytes(content)
    before = snapshot(interrupted)
    rc, err, _ = kfac(capsys, *TRAIN, "--out", interrupted)
    line = one_error(err, str(interrupted / name), *needles)
    assert rc == 2 and "Traceback" not in line
    assert snapshot(interrupted) == before


def test_garbled_csv_names_the_file_and_line(interrupted, capsys):
    path = interrupted / "episodes.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "twelve,x\r\n"
    path.write_text("".join(lines))
    rc, err, _ = kfac(capsys, *TRAIN, "--out", interrupted)
    assert rc == 2
    one_error(err, f"{path} line 3 is garbled", "2 fields, the header has 4")


def test_torn_last_row_is_dropped_on_resume(interrupted, capsys):
    path = interrupted / "episodes.csv"
    rows = path.read_bytes()
    path.write_bytes(rows + b"2040,0.0")  # a kill inside the last append
    (interrupted / ".status.json.k2j3.tmp").write_bytes(b'{"st')  # and one inside a rename
    assert kfac(capsys, *TRAIN, "--out", interrupted)[0] == 0
    assert path.read_bytes() == rows  # every whole row kept, the torn one gone
    assert not list(interrupted.glob(".*.tmp"))  # defect 11: stale temp files removed


# ---------------------------------------------------------------------------------------------
# defects 6 and 14: a changed config is refused, also on a finished run


def test_changed_config_on_a_finished_run_is_refused(finished, capsys):
    before = snapshot(finished)
    for extra in (["--variant", "baselines"], ["--set", "kfac.damping=0.5"]):
        rc, err, out = kfac(capsys, *TRAIN, "--out", finished, *extra)
        line = one_error(err, f"{finished / 'config.json'} holds a run with a different config")
        assert rc == 2 and "already finished" not in out and "--retry-failed" not in line
    assert snapshot(finished) == before
    rc, _, out = kfac(capsys, *TRAIN, "--out", finished)  # the same config: nothing to do
    assert rc == 0 and "already finished (done, 2048 steps)" in out


# ---------------------------------------------------------------------------------------------
# defect 3: environment and file-system failures


def test_out_under_a_file_is_one_line_and_creates_nothing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err, _ = kfac(capsys, *TRAIN, "--out", blocker / "run")
    assert rc == 1
    one_error(err, f"cannot create {blocker / 'run' / '.lock'}: not a directory")
    rc, err, _ = kfac(capsys, *TRAIN, "--out", blocker)
    assert rc == 2
    one_error(err, f"{blocker} is a file, not a run directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full-disk", "read-only"])
def test_failed_first_write_leaves_no_directory(tmp_path, capsys, monkeypatch, code):
    def fail(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", fail)
    out = tmp_path / "runs" / "x"
    rc, err, _ = kfac(capsys, *TRAIN, "--out", out)
    assert rc == 1
    one_error(err, f"cannot write {out / 'config.json'}: {os.strerror(code).lower()}")
    assert not (tmp_path / "runs").exists()  # parents created for it are removed too


def test_sweep_out_under_a_file_is_one_line(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('variants = ["paper"]\nenvs = ["CartPole-v1"]\nseeds = 1\nsteps = 500\n')
    (tmp_path / "file").write_text("x")
    rc, err, _ = kfac(capsys, "sweep", spec, "--out", tmp_path / "file" / "s", "--no-progress")
    assert rc == 1
    one_error(err, f"{tmp_path / 'file' / 's'}", "not a directory")


def _refuse_writes_in(directory: Path, code: int, monkeypatch) -> None:
    """New files in ``directory`` fail with ``code``, as the kernel does for a read-only mount,
    or for a user without write permission (root writes through mode bits)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == directory:
            raise OSError(code, os.strerror(code))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("case", ["under-a-file", "read-only", "read-only-fs", "a-directory"])
def test_play_gif_that_cannot_be_written_is_one_line(finished, tmp_path, capsys, monkeypatch, case):
    (tmp_path / "file").write_text("x")
    gif, reason = tmp_path / "file" / "sub" / "play.gif", "not a directory"
    if case == "a-directory":
        gif, reason = finished, "is a directory"  # e.g. the run directory itself
    elif case.startswith("read-only"):
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        code = errno.EACCES if case == "read-only" else errno.EROFS
        if code == errno.EROFS or os.geteuid() == 0:
            _refuse_writes_in(folder, code, monkeypatch)
        gif, reason = folder / "play.gif", os.strerror(code).lower()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc, err, out = kfac(capsys, "play", finished, "--episodes", "1", "--gif", gif)
    assert rc == 1
    one_error(err, f"cannot write {gif}: {reason}")
    assert "episode" not in out  # refused before anything is played
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_play_gif_into_new_directories_is_written(finished, tmp_path, capsys):
    gif = tmp_path / "new" / "sub" / "play.gif"
    rc, err, out = kfac(capsys, "play", finished, "--episodes", "1", "--gif", gif)
    assert rc == 0 and err == [] and f"wrote {gif}" in out
    assert gif.read_bytes()[:6] == b"GIF89a"
    assert [p.name for p in gif.parent.iterdir()] == ["play.gif"]  # no probe or temp file left


# ---------------------------------------------------------------------------------------------
# defects 12 and 13: sweep resources and size


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--cpus-per-run", "0", "--cpus-per-run must be a number > 0, got 0.0"),
        ("--cpus-per-run", "nan", "--cpus-per-run must be a number > 0, got nan"),
        ("--gpus-per-run", "-1", "--gpus-per-run must be a number >= 0, got -1.0"),
    ],
)
def test_sweep_resource_flags_have_domains(tmp_path, capsys, flag, value, needle):
    spec = tmp_path / "s.toml"
    spec.write_text('variants = ["paper"]\nenvs = ["CartPole-v1"]\nseeds = 1\n')
    rc, err, _ = kfac(capsys, "sweep", spec, "--dry-run", flag, value)
    assert rc == 2
    one_error(err, needle)


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ("seeds = 1000000000\n", "`seeds` = 1000000000: more than a sweep may hold"),
        (
            'seeds = 100\n[grid]\n"kfac.damping" = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]'
            '\n"loss.ent_coef" = [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1,'
            " 0.11, 0.12]\n",
            "the spec describes 11,700 runs; a sweep holds at most 10,000",
        ),
    ],
    ids=["seeds", "grid"],
)
def test_oversized_spec_is_refused_before_expansion(tmp_path, capsys, lines, needle):
    spec = tmp_path / "s.toml"
    spec.write_text('variants = ["paper"]\nenvs = ["CartPole-v1"]\n' + lines)
    rc, err, _ = kfac(capsys, "sweep", spec, "--dry-run")
    assert rc == 2
    one_error(err, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


# ---------------------------------------------------------------------------------------------
# defect 5: two trains on one directory


def _spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", argv[0], *argv[1:]],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


CLI = "import sys; from kfac_bench.cli import main; sys.exit(main(sys.argv[1:]))"


def test_second_train_on_a_locked_directory_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "D"
    args = [*TRAIN[:3], "--steps", "10000000", "--no-progress", "--out", str(run_dir)]
    first = _spawn([CLI, *args])
    try:
        deadline = time.monotonic() + 60
        while store.lock_holder(run_dir) is None or not (run_dir / "status.json").exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first train never started"
            time.sleep(0.05)
        rc, err, _ = kfac(capsys, *args)
        assert rc == 2
        one_error(err, f"{run_dir} is in use by another kfac-bench process (pid {first.pid})")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert store.lock_holder(run_dir) is None  # the kernel released the dead holder's lock
    episodes = pd.read_csv(run_dir / "episodes.csv")
    assert episodes.step.is_monotonic_increasing and store.read_status(run_dir) is not None
    assert episodes.wall_time.is_monotonic_increasing  # one writer: a second would interleave
    assert (episodes.groupby("step").size() <= 16).all()  # ≤ one episode end per env and step


# ---------------------------------------------------------------------------------------------
# fault injection: SIGKILL inside atomic writes and CSV appends, then resume


FAULTS = r"""
import csv, io, os, signal, sys
from kfac_bench import store
mode, n = os.environ["KFAC_FAULT"].split(":")
calls = [0]
def due():
    calls[0] += 1
    return calls[0] == int(n)
def die():
    os.kill(os.getpid(), signal.SIGKILL)
real_fsync, real_replace, real_write = os.fsync, os.replace, store.CsvLog.write
def fsync(fd):                       # temp file written, not yet synced nor renamed
    if mode == "fsync" and due(): die()
    real_fsync(fd)
def replace(src, dst):               # before / after the rename of an atomic write
    if mode == "replace" and due(): die()
    real_replace(src, dst)
    if mode == "after-replace" and due(): die()
def write(self, rows):               # half an append of episode rows
    rows = list(rows)
    if mode == "torn" and rows and self.path.name == "episodes.csv" and due():
        text = io.StringIO()
        csv.writer(text).writerows([[store._fmt(r.get(c)) for c in self.columns] for r in rows])
        self.handle.write(text.getvalue()[:-3]); self.handle.flush(); die()
    real_write(self, rows)
os.fsync, os.replace, store.CsvLog.write = fsync, replace, write
from kfac_bench.cli import main
sys.exit(main(sys.argv[1:]))
"""
KILLS = [
    ("fsync", 1),  # inside the first write of config.json
    ("after-replace", 2),  # config.json in place, before the first status.json
    ("replace", 8),  # inside a checkpoint or status write
    ("torn", 12),
    ("after-replace", 21),  # between checkpoint.pt and its status.json
    ("fsync", 30),
    ("torn", 6),
]


def _episode_starts_oracle(episodes: pd.DataFrame, resumes: list[int]) -> None:
    """With one env, episode i starts where episode i-1 ended, unless the run resumed in
    between: then it starts at the (last) checkpoint step it resumed from, where the env was
    reset. A lost row shows as an unexplained gap, a duplicated one as an overlap."""
    previous_end = 0
    for step, length in zip(episodes.step, episodes.length):
        between = [r for r in resumes if previous_end <= r < step]
        expected = max(between) if between else previous_end
        assert step - length == expected, (step, length, previous_end, resumes)
        previous_end = step


def test_sigkill_at_many_points_loses_and_duplicates_nothing(tmp_path):
    run_dir = tmp_path / "D"
    args = [
        *TRAIN[:3], "--steps", "3000", "--no-progress", "--out", str(run_dir),
        "--set", "rollout.n_envs=1", "--set", "rollout.n_steps=16",
        "--set", "log.checkpoint_every=2", "--set", "log.update_every=1",
    ]  # fmt: skip
    resumes: list[int] = [0]
    kept: list[pd.DataFrame] = []  # rows up to each kill's checkpoint: must all survive
    saw = {"tmp": 0, "torn": 0}
    for mode, n in [*KILLS, (None, 0)]:
        process = _spawn([FAULTS if mode else CLI, *args], {"KFAC_FAULT": f"{mode}:{n}"})
        _, stderr = process.communicate(timeout=120)
        if mode is None:
            assert process.returncode == 0, stderr
            break
        assert process.returncode == -signal.SIGKILL, (mode, n, stderr)
        saw["tmp"] += bool(list(run_dir.glob(".*.tmp")))
        episodes_csv = run_dir / "episodes.csv"
        if mode == "torn":
            saw["torn"] += not episodes_csv.read_bytes().endswith(b"\n")
        checkpoint = run_dir / "checkpoint.pt"
        cut = int(store.load_checkpoint(checkpoint)["steps"]) if checkpoint.exists() else 0
        resumes.append(cut)
        if cut and episodes_csv.exists():
            rows = episodes_csv.read_bytes()
            whole = rows[: rows.rfind(b"\n") + 1].decode()
            frame = pd.read_csv(io.StringIO(whole))
            kept.append(frame[frame.step <= cut].reset_index(drop=True))
    assert saw == {"tmp": 3, "torn": 2}  # the faults happened where they were meant to
    status = store.read_status(run_dir)
    assert (status.state, status.steps) == (store.RunState.DONE, 3008)
    assert not list(run_dir.glob(".*.tmp")) and store.lock_holder(run_dir) is None
    episodes = pd.read_csv(run_dir / "episodes.csv")
    updates = pd.read_csv(run_dir / "updates.csv")
    for before in kept:
        pd.testing.assert_frame_equal(episodes.iloc[: len(before)], before)
    _episode_starts_oracle(episodes, sorted(set(resumes)))
    assert list(updates["update"]) == list(range(1, 3008 // 16 + 1))
    assert (updates.step == updates["update"] * 16).all()


def test_the_episode_oracle_rejects_lost_and_duplicated_rows():
    rows = pd.DataFrame({"step": [10, 25, 40, 52], "length": [10, 15, 8, 12]})  # resumed at 32
    _episode_starts_oracle(rows, [0, 32])
    for broken in (rows.drop(index=0), pd.concat([rows.iloc[:2], rows.iloc[1:]])):
        with pytest.raises(AssertionError):
            _episode_starts_oracle(broken.reset_index(drop=True), [0, 32])
