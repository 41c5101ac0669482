"""Pure pieces of ``scripts/gpu_check.py``: comparing two runs cell by cell, reducing the captured
benchmark results to tables, and rendering the markdown summary."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

CLOCK_COLUMNS = {"wall_time", "fps"}  # the only cells two same-seed runs may differ in


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _diff(a: str, b: str) -> float:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return math.inf
    if math.isnan(x) and math.isnan(y):
        return 0.0
    return abs(x - y)


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """Cell-by-cell comparison of two run directories (CSVs without the clock columns, and the
    final checkpoint's parameters). ``identical`` only when every cell is the same text (the
    CSVs hold ``repr`` floats, so equal text is bitwise-equal values) and every parameter tensor
    is bitwise equal. ``differing`` maps ``file:column`` (or ``param:<name>``) to the largest
    absolute difference."""
    differing: dict[str, float] = {}
    rows = {}
    for name in ("updates.csv", "episodes.csv"):
        ra, rb = _rows(Path(a) / name), _rows(Path(b) / name)
        rows[name] = [len(ra), len(rb)]
        if len(ra) != len(rb):
            differing[f"{name}:rows"] = math.inf
        for x, y in zip(ra, rb):
            for column in x.keys() | y.keys():
                if column in CLOCK_COLUMNS or x.get(column) == y.get(column):
                    continue
                key = f"{name}:{column}"
                gap = _diff(x.get(column, ""), y.get(column, ""))
                differing[key] = max(differing.get(key, 0.0), gap)
    params = 0
    ca, cb = Path(a) / "checkpoint.pt", Path(b) / "checkpoint.pt"
    if ca.exists() and cb.exists():
        import torch

        pa = torch.load(ca, map_location="cpu", weights_only=False)["policy"]
        pb = torch.load(cb, map_location="cpu", weights_only=False)["policy"]
        for name in pa.keys() | pb.keys():
            params += 1
            if name not in pa or name not in pb or pa[name].shape != pb[name].shape:
                differing[f"param:{name}"] = math.inf
            elif not torch.equal(pa[name], pb[name]):
                gap = (pa[name].double() - pb[name].double()).abs().max().item()
                differing[f"param:{name}"] = gap
    else:
        differing["checkpoint.pt"] = math.inf
    compared = sum(r[0] for r in rows.values())
    return {
        "identical": not differing and compared > 0,
        "rows": rows,
        "parameters": params,
        "differing": dict(sorted(differing.items())),
    }


def update_ratios(results: Any) -> list[dict[str, Any]]:
    """One row per captured update benchmark: setting, batch, s/update for ACKTR and A2C, ratio."""
    table = []
    for entry in results if isinstance(results, list) else []:
        info = entry.get("extra_info") or {}
        if info.get("kind") != "update":
            continue
        table.append(
            {
                "setting": info.get("setting"),
                "async_inverse": bool((info.get("overrides") or {}).get("kfac.async_inverse")),
                "batch": info.get("batch"),
                "acktr_s": info.get("acktr_mean_s"),
                "a2c_s": info.get("a2c_mean_s"),
                "ratio": info.get("ratio"),
                "timed": "median_s" in entry,
            }
        )
    return table


def decompositions(results: Any) -> list[dict[str, Any]]:
    """``eigh`` and Cholesky medians side by side per (size, dtype), largest first."""
    cells: dict[tuple[int, str], dict[str, float]] = {}
    for entry in results if isinstance(results, list) else []:
        info = entry.get("extra_info") or {}
        if info.get("kind") != "decomposition" or "median_s" not in entry:
            continue
        cells.setdefault((int(info["n"]), str(info["dtype"])), {})[info["method"]] = entry[
            "median_s"
        ]
    table = []
    for (n, dtype), times in sorted(cells.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        eigh, chol = times.get("eigh"), times.get("cholesky")
        ratio = eigh / chol if eigh and chol else None
        table.append({"n": n, "dtype": dtype, "eigh_s": eigh, "cholesky_s": chol, "ratio": ratio})
    return table


def _num(value: Any, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value * 1e3:.3g}"


def render(summary: dict[str, Any]) -> str:
    """The markdown summary (every number also in gpu-check.json)."""
    quick = summary.get("quick")
    lines = [
        f"# gpu-check on {summary.get('device_name')}",
        "",
        f"device `{summary.get('device')}`{' (--quick: smoke-test budgets)' if quick else ''}, "
        f"torch {summary.get('torch')}, commit "
        f"{(summary.get('provenance') or {}).get('git_commit', '?')[:10]}"
        f"{' (dirty)' if (summary.get('provenance') or {}).get('git_dirty') else ''}, "
        f"{summary.get('env')} with the `{summary.get('preset')}` preset. "
        f"Result: **{'passed' if summary.get('passed') else 'FAILED'}**.",
        "",
        "## Determinism (same seed twice)",
        "",
    ]
    det = summary.get("determinism") or {}
    if "pairs" in det:
        lines += [
            f"{det['steps']:,} env steps per run; every CSV cell but wall_time/fps and every "
            "parameter of the final checkpoint compared.",
            "",
            "| pair | identical | rows (updates, episodes) | differing |",
            "|---|---|---|---|",
        ]
        for name, pair in det["pairs"].items():
            rows = pair.get("rows") or {}
            counts = ", ".join(str(v[0]) for v in rows.values()) or "–"
            diff = pair.get("error") or (
                "; ".join(f"{k} (max {_num(v)})" for k, v in list(pair["differing"].items())[:6])
                or "none"
            )
            lines.append(
                f"| {name} | {'yes' if pair.get('identical') else 'no'} | {counts} | {diff} |"
            )
    else:
        lines.append(f"not run: {det.get('error')}")
    tp = summary.get("throughput") or {}
    lines += ["", "## Throughput", ""]
    if "state" in tp:
        lines.append(
            f"{tp['steps']:,} env steps in {_num(tp['wall_s'], ',.1f')} s: "
            f"**{_num(tp['env_steps_per_s'], ',.0f')} env steps/s** ({tp['state']}; "
            f"{tp['episodes']} episodes, mean return of the last 20: {_num(tp['last20_return'])})."
        )
    else:
        lines.append(f"not run: {tp.get('error')}")
    lines += [
        "",
        "## Update cost: ACKTR / A2C, Nature CNN (target ≤ 1.25)",
        "",
        "| setting | inverse | batch | ACKTR s/update | A2C s/update | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary.get("update_ratios") or []:
        lines.append(
            f"| {row['setting']} | {'async' if row['async_inverse'] else 'sync'} | {row['batch']} "
            f"| {_num(row['acktr_s'])} | {_num(row['a2c_s'])} | {_num(row['ratio'])}"
            f"{'' if row['timed'] else ' (quick shapes, untimed)'} |"
        )
    lines += [
        "",
        "## Decompositions: eigh vs Cholesky + solve",
        "",
        "| n | dtype | eigh ms | Cholesky ms | eigh / Cholesky |",
        "|---|---|---|---|---|",
    ]
    for row in summary.get("decomposition_table") or []:
        lines.append(
            f"| {row['n']} | {row['dtype']} | {_ms(row['eigh_s'])} | {_ms(row['cholesky_s'])} "
            f"| {_num(row['ratio'])} |"
        )
    walls = summary.get("wall_s") or {}
    lines += ["", "Wall time per check (s): " + ", ".join(f"{k} {v}" for k, v in walls.items())]
    for problem in summary.get("problems") or []:
        lines.append(f"- FAILED: {problem}")
    return "\n".join(lines) + "\n"
