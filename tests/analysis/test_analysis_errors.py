"""`kfac-bench analyze` on bad input and failing disks: one error line, the old report intact."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from analysis_synthetic import build_sweep

from kfac_bench import atomic
from kfac_bench.cli import main


def analyze_cli(capsys, *args: object) -> tuple[int, str]:
    rc = main(["analyze", *map(str, args), "--bootstrap", "20"])
    err = capsys.readouterr().err.strip()
    return rc, err


def one_error(err: str, *needles: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kfac-bench: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    return build_sweep(tmp_path_factory.mktemp("s") / "s", labels=("paper", "a2c"),
                       envs=("CartPole-v1",), seeds=range(2))  # fmt: skip


def test_out_under_a_file(sweep_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, err = analyze_cli(capsys, sweep_dir, "--out", tmp_path / "file" / "report")
    assert rc == 1
    one_error(err, str(tmp_path / "file"), "not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full-disk", "read-only"])
def test_failing_disk_keeps_the_previous_report(sweep_dir, tmp_path, capsys, monkeypatch, code):
    out = tmp_path / "report"
    rc, _ = analyze_cli(capsys, sweep_dir, "--out", out)
    assert rc == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}

    def fail_on_the_fifth_write(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] >= 5:
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", fail_on_the_fifth_write)
    rc, err = analyze_cli(capsys, sweep_dir, "--out", out)
    assert rc == 1
    one_error(err, "cannot write", str(out), os.strerror(code).lower())
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging left


def test_failing_disk_on_a_first_report_leaves_nothing(sweep_dir, tmp_path, capsys, monkeypatch):
    def fail(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", fail)
    rc, err = analyze_cli(capsys, sweep_dir, "--out", tmp_path / "report")
    assert rc == 1
    one_error(err, "cannot write", "no space left on device")
    assert list(tmp_path.iterdir()) == []  # no empty report/figures/


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--bootstrap", "0"), "--bootstrap must be >= 1"),
        (("--bootstrap", "-3"), "--bootstrap must be >= 1"),
    ],
)
def test_bad_options(sweep_dir, capsys, args, needle):
    rc = main(["analyze", str(sweep_dir), *args])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    one_error(err, needle)


def test_missing_runs_dir(tmp_path, capsys):
    rc, err = analyze_cli(capsys, tmp_path / "nope")
    assert rc != 0
    one_error(err, "runs directory not found", str(tmp_path / "nope"))
