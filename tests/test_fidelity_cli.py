"""``kfac-bench fidelity`` at its boundary (issue 12 defects 10 and 3; issue 11 columns): every bad
value is one line naming the flag, the value and the range, exit 2, nothing written; an unwritable
``--out`` is one ``cannot write`` line, exit 1, nothing left behind; the CSV carries both
references and, in running mode, both factor sets."""

from __future__ import annotations

import csv
import errno
import os
import sys
from pathlib import Path

import pytest

from kfac_bench.cli import main
from kfac_bench.fidelity import COLUMNS

TINY = ["--env", "CartPole-v1", "--batch", "16", "--budget", "20", "--probes", "8"]


def kfac(capsys, monkeypatch, *argv) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["kfac-bench"])
    rc = main(["fidelity", *(str(a) for a in argv)])
    captured = capsys.readouterr()
    return rc, captured.err, captured.out


def one_error(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kfac-bench: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("flag", "value", "range_"),
    [
        ("--batch", "0", "an integer >= 1"),
        ("--batch", "-3", "an integer >= 1"),
        ("--damping", "-1", "a finite number > 0"),
        ("--damping", "0", "a finite number > 0"),
        ("--damping", "nan", "a finite number > 0"),
        ("--damping", "inf", "a finite number > 0"),
        ("--eigen-clip", "-1e-6", "a finite number >= 0"),
        ("--budget", "0", "a finite number > 0"),
        ("--budget", "-5", "a finite number > 0"),
        ("--probes", "0", "an integer >= 1"),
        ("--cg-iters", "0", "an integer >= 1"),
        ("--cg-iters", "-2", "an integer >= 1"),
        ("--running-updates", "-1", "an integer >= 0"),
        ("--max-jacobian-mb", "-1", "a finite number >= 0"),
        ("--seed", "-1", "an integer in [0, 999999999]"),
    ],
)
def test_bad_values_are_one_line_and_write_nothing(
    tmp_path, capsys, monkeypatch, flag, value, range_
):
    out = tmp_path / "runs" / "fid"
    argv = [*TINY, "--out", out]
    if flag == "--damping":
        argv += ["--damping", "0.01", value]  # one bad value in a grid is enough
    else:
        argv.append(f"{flag}={value}")  # '=' form: argparse reads '-1e-6' alone as an option
    rc, err, stdout = kfac(capsys, monkeypatch, *argv)
    assert rc == 2
    floats = ("--damping", "--eigen-clip", "--budget", "--max-jacobian-mb")
    shown = repr(float(value)) if flag in floats else value
    one_error(err, f"{flag}: {shown} is not allowed (must be {range_})")
    assert "fidelity:" not in stdout  # refused before anything ran
    assert list(tmp_path.iterdir()) == []


def test_names_given_twice_or_unknown_are_one_line(tmp_path, capsys, monkeypatch):
    cases = [
        (["--references", "true-fisher", "true-fisher"], "--references: true-fisher given more"),
        (["--variants", "paper", "paper"], "--variants: paper given more than once"),
        (["--references", "exact"], "unknown reference 'exact'; choose from true-fisher, sampled"),
        (
            ["--damping-modes", "kfac"],
            "unknown damping mode 'kfac'; choose from eigen, tikhonov, tikhonov-pi, ekfac",
        ),
        (
            ["--running-updates", "3", "--inverse-staleness", "3"],
            "--inverse-staleness 3 needs --running-updates K > 3 (got K = 3)",
        ),
        (["--running-updates", "3", "--inverse-staleness", "0"], "--inverse-staleness: 0 is not"),
    ]
    for extra, needle in cases:
        rc, err, _ = kfac(capsys, monkeypatch, *TINY, "--out", tmp_path / "x", *extra)
        assert rc == 2
        one_error(err, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (
            "sampled,fisher",
            "--fisher-types: unknown fisher type 'fisher'; choose from sampled, empirical",
        ),
        ("true", "--fisher-types: unknown fisher type 'true'; choose from sampled, empirical"),
        ("", "--fisher-types: unknown fisher type ''; choose from sampled, empirical"),
        ("empirical,empirical", "--fisher-types: empirical given more than once"),
    ],
)
def test_bad_fisher_types_are_one_line(tmp_path, capsys, monkeypatch, value, needle):
    out = tmp_path / "fid"
    rc, err, stdout = kfac(capsys, monkeypatch, *TINY, "--out", out, f"--fisher-types={value}")
    assert rc == 2
    one_error(err, needle)
    assert "fidelity:" not in stdout  # refused before anything ran
    assert list(tmp_path.iterdir()) == []


def test_out_is_a_file_or_under_one(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "fid"):
        rc, err, stdout = kfac(capsys, monkeypatch, *TINY, "--out", out)
        assert rc == 1
        one_error(err, f"cannot write {out / 'fidelity.csv'}: not a directory")
        assert "collected" not in stdout  # refused before measuring
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert blocker.read_text() == "x"


def test_read_only_out_directory_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    import kfac_bench.fidelity.output as output

    real = output.os.statvfs

    def read_only(path):
        stat = real(path)
        return os.statvfs_result((*stat[:8], stat.f_flag | os.ST_RDONLY, *stat[9:]))

    monkeypatch.setattr(output.os, "statvfs", read_only)
    rc, err, stdout = kfac(capsys, monkeypatch, *TINY, "--out", out)
    assert rc == 1
    one_error(err, f"cannot write {out / 'fidelity.csv'}: read-only file system")
    assert "collected" not in stdout and list(out.iterdir()) == []


@pytest.mark.parametrize("fail_at", [1, 2], ids=["csv", "figure"])
@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "full-disk"])
def test_failed_write_leaves_nothing_half_written(tmp_path, capsys, monkeypatch, code, fail_at):
    """The failure comes while writing (after measuring): new directories are removed, an
    existing one keeps its old files untouched, no temp file stays."""
    import kfac_bench.fidelity.output as output

    calls = []
    real = output.os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == fail_at:
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(output.os, "fsync", fsync)
    fresh = tmp_path / "runs" / "fid"
    old = tmp_path / "old"
    old.mkdir()
    (old / "fidelity.csv").write_text("old\n")
    names = ["fidelity.csv", "fidelity.png"]
    for out, before in ((fresh, None), (old, ["fidelity.csv"])):
        calls.clear()
        argv = [*TINY, "--variants", "paper", "--damping-modes", "eigen", "--out", out]
        rc, err, _ = kfac(capsys, monkeypatch, *argv)
        assert rc == 1
        one_error(err, f"cannot write {out / names[fail_at - 1]}: {os.strerror(code).lower()}")
        if before is None:
            assert not (tmp_path / "runs").exists()  # the parents it created are gone too
        else:
            assert sorted(p.name for p in out.iterdir()) == before
            assert (out / "fidelity.csv").read_text() == "old\n"


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_reference_and_factors_columns_end_to_end(tmp_path, capsys, monkeypatch):
    out = tmp_path / "fid"
    argv = [
        *TINY,
        "--variants",
        "paper",
        "kfac-pytorch",
        "--running-updates",
        "3",
        "--out",
        out,
    ]
    rc, err, stdout = kfac(capsys, monkeypatch, *argv)
    assert rc == 0, err
    assert "+ 2 older batches" in stdout
    rows = _read(out / "fidelity.csv")
    assert list(rows[0]) == COLUMNS
    assert (out / "fidelity.png").stat().st_size > 1000
    assert {r["reference"] for r in rows} == {"true-fisher", "sampled-fisher"}
    measured = [r for r in rows if r["damping_mode"] != "exact"]
    assert {r["factors"] for r in measured} == {"batch", "running-3"}
    network = [r for r in measured if r["layer"] == "network"]
    assert len(network) == 2 * 4 * 2 * 2  # variants × damping modes × references × factor sets
    assert {r["fisher_type"] for r in measured} == {"sampled"}
    assert {r["damping_mode"] for r in measured} == {"eigen", "tikhonov", "tikhonov-pi", "ekfac"}
    rules = {(r["variant"], r["running_init"]) for r in measured if r["factors"] == "running-3"}
    assert rules == {("paper", "first"), ("kfac-pytorch", "identity")}
    assert {r["stats_decay"] for r in measured if r["factors"] == "running-3"} == {
        "0.99"
    }  # classic-tuned
    assert all(r["running_init"] == "" for r in measured if r["factors"] == "batch")
    exact = {(r["reference"], r["variant"]) for r in rows if r["damping_mode"] == "exact"}
    assert exact == {
        ("true-fisher", "exact-block-diagonal"),
        ("sampled-fisher", "exact-block-diagonal"),
        ("true-fisher", "sampled-fisher"),
    }
    assert all(r["factors"] == "" for r in rows if r["damping_mode"] == "exact")
    assert all(r["fisher_type"] == "" for r in rows if r["damping_mode"] == "exact")
    for r in rows:
        assert -1.0 <= float(r["cosine"]) <= 1.0


def test_fisher_types_end_to_end(tmp_path, capsys, monkeypatch):
    out = tmp_path / "fid"
    argv = [*TINY, "--variants", "paper", "--damping-modes", "eigen", "ekfac", "--out", out]
    rc, err, _ = kfac(capsys, monkeypatch, *argv, "--fisher-types", "sampled,empirical")
    assert rc == 0, err
    rows = _read(out / "fidelity.csv")
    measured = [r for r in rows if r["damping_mode"] != "exact"]
    network = [r for r in measured if r["layer"] == "network"]
    assert len(network) == 2 * 2 * 2  # fisher types × damping modes × references
    cos = {(r["reference"], r["fisher_type"], r["damping_mode"]): r["cosine"] for r in network}
    for reference in ("true-fisher", "sampled-fisher"):
        for mode in ("eigen", "ekfac"):
            assert cos[reference, "sampled", mode] != cos[reference, "empirical", mode]
