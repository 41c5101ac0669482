"""What a sweep shows: the dry run's table, the live progress, the closing summary.

* :func:`print_plan` (``--dry-run``): one row per run (name, steps, state, axes) and the work
  left, with a rough duration from :func:`kfac_bench.sweep.plan.estimated_seconds`.
* :class:`Display`: a tqdm bar over all env steps on a terminal, else a line every 30 s; event
  lines in both cases. It is the :class:`~kfac_bench.sweep.scheduler.Progress` the CLI hands to
  the scheduler.
* :func:`print_summary`: the table ``run, state, steps, error`` that ends every sweep, the
  counts, and what to do about failed runs (``--retry-failed`` only where it can help).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from kfac_bench.sweep.plan import NOT_RETRYABLE, Entry, estimated_seconds
from kfac_bench.sweep.spec import SweepSpec


def print_plan(spec: SweepSpec, out: Path, entries: list[Entry]) -> None:
    axes = list(dict.fromkeys(k for e in entries for k in e.run.axes))
    header = ["run", "steps", "state", *axes]
    rows = []
    for e in entries:
        state = e.state if not e.note else f"{e.state} ({e.note})"
        rows.append(
            [
                e.run.name,
                f"{e.run.config.total_steps:,}",
                state,
                *(str(e.run.axes.get(a, "-")) for a in axes),
            ]
        )
    _print_table(header, rows)
    todo = [e for e in entries if e.todo]
    steps = sum(max(0, e.target - e.steps) for e in todo)
    cpu_s = sum(estimated_seconds(e) for e in todo)
    counts = _count(entries)
    print(
        f"\nsweep {spec.name!r} -> {out}  (spec hash {spec.spec_hash})\n"
        f"{len(entries)} runs: {_counts_text(counts)}; {len(todo)} to run, "
        f"{steps:,} env steps (roughly {_duration(cpu_s)} of worker time at one CPU thread each)"
    )


class Display:
    """tqdm bar over all env steps (on a terminal), event lines, a periodic line otherwise."""

    def __init__(self, entries: list[Entry], enabled: bool) -> None:
        self.entries = entries
        self.bar = None
        self.last_line = time.monotonic()
        self.start = time.monotonic()
        self.start_steps = self.steps()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total(),
                initial=self.start_steps,
                unit="step",
                unit_scale=True,
                dynamic_ncols=True,
                file=sys.stderr,
                bar_format="{percentage:3.0f}%|{bar:16}| {n_fmt}/{total_fmt} steps "
                "[{elapsed}<{remaining}{postfix}]",
            )

    def steps(self) -> int:
        return sum(min(e.steps, e.target) for e in self.entries)

    def total(self) -> int:
        return sum(e.target for e in self.entries)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def refresh(self, running: int) -> None:
        counts = _count(self.entries)
        fps = sum(e.fps for e in self.entries if e.state == "running")
        status = (
            f"done {counts.get('done', 0) + counts.get('diverged', 0)} | running {running} | "
            f"failed {counts.get('failed', 0)} | pending {counts.get('pending', 0)} | "
            f"{_si(fps)} steps/s"
        )
        if self.bar is not None:
            total, steps = self.total(), self.steps()
            if total != self.bar.total:
                self.bar.total = total
            if steps >= self.bar.n:
                self.bar.update(steps - self.bar.n)
            else:
                self.bar.n = steps
            self.bar.set_postfix_str(status, refresh=True)
        elif time.monotonic() - self.last_line > 30:
            self.last_line = time.monotonic()
            done, total = self.steps(), max(1, self.total())
            elapsed = time.monotonic() - self.start
            rate = (done - self.start_steps) / elapsed if elapsed > 0 else 0.0
            eta = _duration((total - done) / rate) if rate > 0 else "?"
            print(f"[{100 * done / total:5.1f}%] {status} | ETA {eta}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_summary(spec: SweepSpec, out: Path, entries: list[Entry]) -> None:
    rows = [
        [e.run.name, e.state, f"{e.steps:,}", _short(e.error or _fidelity_note(e))] for e in entries
    ]
    print()
    _print_table(["run", "state", "steps", "error"], rows)
    counts = _count(entries)
    print(f"\n{spec.name}: {_counts_text(counts)} -> {out / 'sweep.json'}")
    failed = [e for e in entries if e.state == "failed"]
    stuck = [e for e in failed if e.note in NOT_RETRYABLE]
    if len(failed) > len(stuck):
        print(
            f"{len(failed) - len(stuck)} run(s) failed (see <run>/train.log); rerun them "
            f"with `kfac-bench sweep {spec.path} --retry-failed`",
            file=sys.stderr,
        )
    if stuck:
        print(
            f"{len(stuck)} run(s) not started: their directory holds another config or "
            "cannot be read (see the error column); --retry-failed does not change that",
            file=sys.stderr,
        )


# ---------------------------------------------------------------------------------------------
# small helpers


def _count(entries: list[Entry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.state] = counts.get(e.state, 0) + 1
    return counts


def _counts_text(counts: dict[str, int]) -> str:
    order = ("done", "diverged", "failed", "running", "pending")
    return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))


def _fidelity_note(e: Entry) -> str:
    if e.fidelity and e.fidelity.get("error"):
        return f"fidelity: {e.fidelity['error']}"
    return ""


def _short(text: str, width: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _si(value: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
