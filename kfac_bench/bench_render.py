"""Render ``runs/bench/report.md`` and ``report.png`` from a pytest-benchmark JSON written by
``python -m kfac_bench.bench_report run`` (:func:`render`); the headline rows are
:func:`headline`. Targets are reported, never asserted."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from kfac_bench import store
from kfac_bench.bench_chart import chart as draw_chart
from kfac_bench.bench_settings import FAST, TARGETS, syrk_bound_ratio, trainer_verdict
from kfac_bench.bench_settings import median_of as _median


def _fmt_time(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "–" if ok is None else ("✓" if ok else "✗")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def load(json_path: Path) -> dict[str, Any]:
    """The pytest-benchmark JSON, with each benchmark reduced to its kind, extra_info and stats."""
    data = json.loads(Path(json_path).read_text())
    grouped: dict[str, list[dict]] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info") or {})
        info["name"] = bench.get("name", "")
        info["id"] = bench.get("param") or bench.get("name", "")
        info["median_s"] = bench["stats"]["median"]
        info["min_s"] = bench["stats"]["min"]
        info["rounds"] = bench["stats"]["rounds"]
        grouped[info.get("kind", "other")].append(info)
    data["grouped"] = grouped
    return data


def headline(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what was measured, the target, and whether it is met."""
    rows = []
    for u in sorted(data["grouped"].get("update", []), key=lambda u: (u["net"], u["setting"])):
        ok = u["ratio"] <= TARGETS["update_ratio"]
        rows.append({
            "what": f"ACKTR/A2C update, {u['net']} B={u['batch']}, {u['setting']} "
                    f"(mean over {u['cycle']} updates)",
            "value": u["ratio"], "target": f"≤ {TARGETS['update_ratio']} (aim {TARGETS['update_ratio_aim']})",
            "ok": ok,
        })  # fmt: skip
    for t in sorted(data["grouped"].get("trainer", []), key=lambda t: t["setting"]):
        target, ok = trainer_verdict(t)
        rows.append({
            "what": f"trainer env-steps/s K-FAC/A2C, {t['setting']}",
            "value": t["ratio"], "target": target, "ok": ok,
        })  # fmt: skip
    products = symmetric_products(data)
    if products:
        within = sum(ratio <= TARGETS["factor_vs_syrk"] for _, ratio in products)
        worst = max(products, key=lambda p: p[1])
        rows.append({
            "what": f"the symmetric product alone (factors.gram, ≥ 0.1 GFLOP, f32) within its syrk "
                    f"bound: {within}/{len(products)}; worst {worst[0]}",
            "value": worst[1], "target": f"≤ {TARGETS['factor_vs_syrk']}× syrk bound",
            "ok": within == len(products),
        })  # fmt: skip
    factors = [f for f in data["grouped"].get("factor", []) if f.get("ratio_to_bare")]
    big = [f for f in factors if f["flops"] >= 1e8]
    if big:
        worst = max(big, key=lambda f: f["ratio_to_bare"])
        within = sum(f["ratio_to_bare"] <= TARGETS["factor_vs_bare"] for f in big)
        rows.append({
            "what": f"factor statistics ≥ 0.1 GFLOP within target: {within}/{len(big)}; "
                    f"worst {worst['id']}",
            "value": worst["ratio_to_bare"], "target": f"≤ {TARGETS['factor_vs_bare']}× bare XᵀX",
            "ok": within == len(big),
        })  # fmt: skip
        syrk = TARGETS["factor_vs_syrk"]
        within = sum(2 * f["ratio_to_bare"] <= syrk for f in big)
        rows.append({
            "what": f"factor statistics ≥ 0.1 GFLOP within their syrk bound: {within}/{len(big)}; "
                    f"worst {worst['id']}",
            "value": 2 * worst["ratio_to_bare"], "target": f"≤ {syrk}× syrk bound (½ bare XᵀX)",
            "ok": within == len(big),
        })  # fmt: skip
    return rows


def symmetric_products(data: dict[str, Any]) -> list[tuple[str, float]]:
    """(shape, factors.gram time ÷ half the GEMM's) for every float32 bare product ≥ 0.1 GFLOP."""
    pairs: dict[tuple, dict[str, float]] = defaultdict(dict)
    for b in data["grouped"].get("bare", []):
        if b.get("dtype") == "f32" and 2 * b["rows"] * b["cols"] ** 2 >= 1e8:
            pairs[(b["rows"], b["cols"])][b["op"]] = b["median_s"]
    return [
        (f"{r}×{c}", syrk_bound_ratio(ops["syrk"], ops["gemm"]))
        for (r, c), ops in sorted(pairs.items())
        if "syrk" in ops and "gemm" in ops
    ]


def render(json_path: Path, out_dir: Path | None = None) -> Path:
    """Write ``report.md`` and ``report.png`` next to the JSON (or in ``out_dir``)."""
    json_path = Path(json_path)
    out_dir = Path(out_dir) if out_dir is not None else json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load(json_path)
    chart = out_dir / "report.png"
    has_chart = draw_chart(data, chart)
    lines = _markdown(data, json_path, chart if has_chart else None)
    report = out_dir / "report.md"
    store.write_atomic(report, ("\n".join(lines) + "\n").encode())
    return report


def _markdown(data: dict[str, Any], json_path: Path, chart: Path | None) -> list[str]:
    g = data["grouped"]
    machine = data.get("machine_info", {})
    env = machine.get("kfac_bench", {})
    suite = data.get("kfac_bench_suite", {})
    commit = data.get("commit_info", {})
    lines = [
        "# kfac-bench: where the time goes",
        "",
        f"Source: `{json_path.name}` · commit `{commit.get('id', '?')[:10]}`"
        f"{' (dirty)' if commit.get('dirty') else ''} · {data.get('datetime', '?')}",
        "",
        "## Machine",
        "",
    ]
    torch_config = env.get("torch_config", "")
    blas = next((ln.strip(" -") for ln in torch_config.splitlines() if "Math Kernel" in ln
                 or "BLAS_INFO" in ln or "OpenBLAS" in ln), "?")  # fmt: skip
    rows = [
        ["CPU", f"{env.get('cpu_model', machine.get('processor', '?'))} × {env.get('cpu_count', '?')}"],
        ["torch", f"{env.get('torch', '?')}, {env.get('torch_threads', '?')} threads"],
        ["BLAS (torch)", blas],
        ["BLAS (scipy)", env.get("scipy_blas", "?")],
        ["syrk of the statistics", env.get("syrk", "scipy's (before issue 16)")],
        ["device", env.get("device", suite.get("device", "cpu"))],
        ["GPU", env.get("gpu", "none")],
        ["load average (1/5/15 min) at start / end",
         f"{_fmt_load(suite.get('loadavg_start'))} / {_fmt_load(env.get('loadavg_end'))}"],
        ["suite wall time", _fmt_time(suite.get("wall_s", math.nan))],
    ]  # fmt: skip
    lines += _table(["", ""], rows)
    lines += [
        "Timings come from a machine shared with other jobs: every ratio below is measured "
        "*within* one benchmark, in interleaved rounds, and the medians of those per-round "
        "ratios are reported. Targets are reported, never asserted.",
        "",
        "## Headline",
        "",
    ]
    lines += _table(
        ["measured", "value", "target", "met"],
        [[r["what"], _fmt(r["value"]), r["target"], _mark(r["ok"])] for r in headline(data)],
    )
    if chart is not None:
        lines += [f"![time per kernel and ratios]({chart.name})", ""]
    lines += _update_section(g.get("update", []))
    lines += _trainer_section(g.get("trainer", []))
    lines += _factor_section(g.get("factor", []))
    lines += _bare_section(g.get("bare", []))
    lines += _decomposition_section(g.get("decomposition", []), g.get("invert", []))
    lines += _precondition_section(g.get("precondition", []))
    lines += [
        "## Settings",
        "",
        "`default` is the KfacConfig defaults (statistics every update on the whole batch, "
        "synchronous eigendecomposition every 10 updates, float32). `fast` adds these dotted "
        "overrides (`kfac_bench.bench_report.FAST`):",
        "",
        "```json",
        json.dumps(FAST, indent=1),
        "```",
        "",
        '`fast-tikhonov-pi` (MinAtar only) is `fast` with `kfac.damping_mode = "tikhonov-pi"`: '
        "a different preconditioner (π-corrected Tikhonov damping, Cholesky inverses, two "
        "products per step instead of four), shown for its cost, not as a speed knob.",
        "",
    ]
    return lines


def _fmt_load(load) -> str:
    return "–" if not load else "/".join(f"{v:.1f}" for v in load)


def _update_section(updates: list[dict]) -> list[str]:
    if not updates:
        return []
    lines = ["## Whole update: ACKTR vs A2C", ""]
    rows = []
    for u in sorted(updates, key=lambda u: (u["net"], u["setting"])):
        cycles = u.get("acktr_update_s") or []
        flat = [t for c in cycles for t in c]
        rows.append([
            f"{u['net']} B={u['batch']}", u["setting"], _fmt_time(u["a2c_mean_s"]),
            _fmt_time(u["acktr_mean_s"]), _fmt_time(_median(flat)), _fmt_time(max(flat, default=math.nan)),
            _fmt(u["ratio"]), " ".join(_fmt(r) for r in u.get("ratios", [])),
        ])  # fmt: skip
    lines += _table(
        ["network", "setting", "A2C update", "ACKTR update (cycle mean)", "ACKTR median update",
         "slowest update (inverse)", "ratio", "per round"],
        rows,
    )  # fmt: skip
    lines += [
        f"Each round is {updates[0]['cycle']} consecutive `Trainer.update` calls on one batch "
        "(one decomposition per cycle); the ratio is the cycle total of ACKTR over A2C.",
        "",
        "### Where an ACKTR update's time goes (mean per update over the timed cycles)",
        "",
    ]
    phase_names = [
        ("forward_backward_other", "forward + losses + training backward"),
        ("fisher_backward", "Fisher backward"),
        ("statistics", "factor statistics"),
        ("decompositions", "decompositions (amortised)"),
        ("precondition", "preconditioning F̃⁻¹g"),
        ("kfac_step_other", "trust region + momentum"),
    ]
    rows = []
    for u in sorted(updates, key=lambda u: (u["net"], u["setting"])):
        phases = u.get("phases_per_update_s") or {}
        if not phases:
            continue
        rows.append(
            [f"{u['net']} B={u['batch']}", u["setting"], _fmt_time(u["a2c_mean_s"])]
            + [_fmt_time(phases.get(key, math.nan)) for key, _ in phase_names]
            + [_fmt_time(phases.get("update", math.nan))]
        )
    lines += _table(
        ["network", "setting", "A2C update", *(label for _, label in phase_names), "ACKTR update"],
        rows,
    )
    lines += [
        "With `async_inverse` the decompositions run on a background thread: the column shows "
        "what the training thread spends starting and installing them, and the contention "
        "shows up in the other columns when no core is idle.",
        "",
    ]
    return lines


def _trainer_section(trainers: list[dict]) -> list[str]:
    if not trainers:
        return []
    trainers = sorted(trainers, key=lambda t: t["setting"])
    lines = ["## Trainer throughput", ""]
    rows = []
    for t in trainers:
        target, ok = trainer_verdict(t)
        rows.append([
            t["setting"], t.get("env", "MinAtar/Breakout-v1"), str(t["steps"]),
            f"{_median(t['a2c_steps_per_s']):.0f}", f"{_median(t['acktr_steps_per_s']):.0f}",
            _fmt(t["ratio"]), " ".join(_fmt(r) for r in t.get("ratios", [])), target, _mark(ok),
        ])  # fmt: skip
    header = ["case", "env", "steps per run", "A2C env-steps/s", "K-FAC env-steps/s", "ratio",
              "per round", "target", ""]  # fmt: skip
    lines += _table(header, rows)
    lines += [
        "Steady state: env steps over wall time across the second half of each run's updates "
        "(`Trainer.run`, logging and checkpoints included).",
        "",
    ]
    phased = [t for t in trainers if t.get("acktr_phases_us_per_step")]
    if phased:
        names = list(phased[0]["acktr_phases_us_per_step"])
        lines += ["Where the time goes, µs per env step over a whole run (the `time_*` phase clock;"
                  " `update` contains fisher, stats, inverse and precondition):", ""]  # fmt: skip
        rows = []
        for t in phased:
            for algo in ("a2c", "acktr"):
                us = t.get(f"{algo}_phases_us_per_step") or {}
                rows.append([t["setting"], algo, *(_fmt(us.get(n), 1) for n in names)])
        lines += [*_table(["case", "run", *names], rows), ""]
    return lines


def _factor_section(factors: list[dict]) -> list[str]:
    if not factors:
        return []
    lines = [
        "## Factor statistics vs the bare product",
        "",
        "Time of `variant.factors(module, input, grad_output)` against the bare `X.T @ X` of "
        "the same (rows, cols) shapes on contiguous matrices, timed in the same rounds "
        "(for `kfac-reduce` on a convolution plus one read of the layer input and output "
        "gradient: its reduction over positions is memory-bound, not a product). FLOPs count "
        "each product as a full GEMM (2·rows·cols²). The syrk bound is half the bare GEMM's "
        "time: a symmetric product needs half its FLOPs (rows·cols²) at the GEMM's rate.",
        "",
    ]
    rows = []
    order = {"nature": 0, "minatar": 1, "mlp": 2}
    for f in sorted(factors, key=lambda f: (order.get(f["net"], 9), f["name"])):
        bare = _median(f.get("bare_s", []))
        ratio = f.get("ratio_to_bare")
        gflops = f["flops"] / f["median_s"] / 1e9 if f["median_s"] else math.nan
        shapes = " + ".join(f"{r}×{c}" for r, c in f["products"])
        ok = None if ratio is None or f["flops"] < 1e8 else ratio <= TARGETS["factor_vs_bare"]
        rows.append([
            f"{f['layer']}-{f['net']}-b{f['batch']}", f["variant"], shapes, _fmt(f["flops"] / 1e9, 3),
            _fmt_time(f["median_s"]), _fmt_time(bare), _fmt(ratio),
            _fmt(None if ratio is None else 2 * ratio), _fmt(gflops, 1), _mark(ok),
        ])  # fmt: skip
    lines += _table(
        ["layer", "variant", "products (rows×cols)", "GFLOP", "time", "bare product", "ratio",
         "× syrk bound", "GFLOP/s", "≤ 1.5"],
        rows,
    )  # fmt: skip
    lines += [
        "(✓/✗ only for kernels of at least 0.1 GFLOP; below that, call overhead dominates.)",
        "",
    ]
    return lines


def _bare_section(bares: list[dict]) -> list[str]:
    if not bares:
        return []
    lines = [
        "## The limit: bare GEMM vs SYRK",
        "",
        "GFLOP/s count the full product's 2·rows·cols² for both; SYRK is `factors.gram`, the "
        "symmetric product the statistics call (MKL syrk + mirror for products ≥ 256 columns "
        "wide, one GEMM for narrower ones, the blocked product where that BLAS is missing; the "
        "kernel column says which), which needs half the arithmetic: its bound is twice the "
        "GEMM's rate.",
        "",
    ]
    by_shape: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for b in bares:
        by_shape[(b["rows"], b["cols"], b["dtype"])][b["op"]] = b
    rows = []
    for (r, c, dtype), ops in sorted(by_shape.items(), key=lambda kv: -kv[0][0] * kv[0][1] ** 2):
        gemm, syrk = ops.get("gemm"), ops.get("syrk")
        flops = 2 * r * c * c
        row = [f"{r}×{c}", dtype, _fmt(flops / 1e9, 3)]
        for b in (gemm, syrk):
            row += (
                [_fmt_time(b["median_s"]), _fmt(flops / b["median_s"] / 1e9, 1)]
                if b
                else ["–", "–"]
            )
        rows.append(row)
        row += [syrk.get("kernel", "scipy") if syrk else "–"]
        row += [
            _fmt(syrk_bound_ratio(syrk["median_s"], gemm["median_s"])) if gemm and syrk else "–"
        ]
    lines += _table(
        ["shape", "dtype", "GFLOP", "GEMM time", "GEMM GFLOP/s", "SYRK time", "SYRK GFLOP/s",
         "SYRK kernel", "× syrk bound"],
        rows,
    )  # fmt: skip
    return lines


def _decomposition_section(decomps: list[dict], inverts: list[dict]) -> list[str]:
    lines = []
    if decomps:
        lines += ["## Decompositions per factor size", ""]
        cols = [(m, d, 1) for d in ("f32", "f64") for m in ("eigh", "cholesky", "inverse")]
        cols.append(("eigh", "f32", 0))
        table: dict[int, dict] = defaultdict(dict)
        threads = 1
        for d in decomps:
            one = d.get("threads", 1) == 1
            if not one:
                threads = d["threads"]
            table[d["n"]][(d["method"], d["dtype"], 1 if one else 0)] = d["median_s"]
        rows = [
            [str(n), *(_fmt_time(table[n].get(c, math.nan)) for c in cols)]
            for n in sorted(table, reverse=True)
        ]
        names = [f"{m} {d}" for m, d, _ in cols[:-1]] + [f"eigh f32, {threads} threads"]
        lines += _table(["n", *names], rows)
        lines += [
            "One thread unless stated. `eigh`: `torch.linalg.eigh` (the `eigen` mode); "
            "`cholesky`: Cholesky of X + γI and a 64-column `cholesky_solve`; `inverse`: the "
            "explicit damped inverse the `tikhonov` modes keep (`cholesky_inverse`).",
            "",
        ]
    if inverts:
        lines += ["## One network's inverse per damping mode (float32, one thread)", ""]
        table2: dict[str, dict] = defaultdict(dict)
        for inv in inverts:
            table2[inv["net"]][inv["mode"]] = inv["median_s"]
        modes = ["eigen", "tikhonov", "tikhonov-pi"]
        rows = [[net, *(_fmt_time(table2[net].get(m, math.nan)) for m in modes)] for net in table2]
        lines += _table(["network", *modes], rows)
    return lines


def _precondition_section(cases: list[dict]) -> list[str]:
    """The eigen mode's Δ of one layer through the kept eigenvectors vs the four full products."""
    if not cases:
        return []
    table: dict[str, dict] = defaultdict(dict)
    for case in cases:
        table[case["case"]][case["path"]] = case
    rows = []
    for name, paths in table.items():
        kept, full = paths.get("kept"), paths.get("full")
        one = kept or full
        speedup = full["median_s"] / kept["median_s"] if kept and full else math.nan
        rows.append([
            name, f"{one['c']} × {one['k']}", f"{one['kept'][0]} × {one['kept'][1]}",
            _fmt(one["flop_fraction"]), kept["used"] if kept else "–",
            _fmt_time(kept["median_s"]) if kept else "–",
            _fmt_time(full["median_s"]) if full else "–", _fmt(speedup),
        ])  # fmt: skip
    header = ["case", "M", "kept p × r", "FLOPs kept/full", "path taken", "apply", "full path"]
    lines = ["## Eigen-mode preconditioning: kept eigenvectors vs full bases", ""]
    lines += _table([*header, "full / taken"], rows)
    lines += [
        "`kfac_bench/curvature/kept_basis.py`: with eigenvalues clipped to 0, the same Δ through "
        "the kept eigenvectors only; the path is taken when its FLOPs are at most "
        "`kept_basis.GAIN` of the full path's. Clipped counts from real runs "
        "(tests/benchmarks/test_bench_precondition.py).",
        "",
    ]
    return lines
