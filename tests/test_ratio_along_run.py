"""scripts/ratio_along_run.py: env-steps/s per window from a hand-made updates.csv, and bad
arguments refused in one line before any run starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from ratio_along_run import window_rates  # noqa: E402


def test_window_rates_between_first_and_last_row_of_each_window(tmp_path):
    rows = [(0, 0.0), (100, 1.0), (200, 3.0), (300, 4.0), (400, 8.0), (500, 9.0)]
    text = "step,wall_time,fps\n" + "".join(f"{s},{t},0\n" for s, t in rows)
    (tmp_path / "updates.csv").write_text(text)
    # [0, 200]: 200 steps in 3 s; [200, 400]: 200 in 5 s; [400, 600]: 100 in 1 s
    assert window_rates(tmp_path, 600, 200) == pytest.approx([200 / 3, 200 / 5, 100 / 1])
    # windows of 250: [0, 250] holds the rows at 0–200, [250, 500] those at 300–500
    assert window_rates(tmp_path, 500, 250) == pytest.approx([200 / 3, 200 / 5])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "Nope-v0"], "unknown environment id 'Nope-v0'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
    ],
)
def test_bad_arguments_one_line(tmp_path, args, message):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ratio_along_run.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0
    assert message in done.stderr
    assert list(tmp_path.iterdir()) == []
