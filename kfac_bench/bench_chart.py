"""``runs/bench/report.png``: the benchmark report's figure (``bench_render.render`` calls
:func:`chart`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from kfac_bench import store
from kfac_bench.bench_settings import TARGETS, trainer_verdict
from kfac_bench.bench_settings import median_of as _median


def chart(data: dict[str, Any], path: Path) -> bool:
    """Bar charts: factor kernel vs bare product (Nature CNN), ratios to the bare product, and the
    update / trainer ratios against their targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = data["grouped"]
    factors = [f for f in g.get("factor", []) if f.get("bare_s")]
    ratios = g.get("update", []) + g.get("trainer", [])
    if not factors and not ratios:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(18, 6), constrained_layout=True)

    ax = axes[0]
    nature = [
        f
        for f in factors
        if f["net"] == "nature" and f["layer"] in ("conv1", "conv2", "conv3", "fc")
    ]
    nature.sort(key=lambda f: (f["layer"], f["variant"]))
    labels = [f"{f['layer']} {f['variant']}" for f in nature]
    y = range(len(nature))
    ax.barh([i + 0.2 for i in y], [f["median_s"] * 1e3 for f in nature], 0.4, label="factor kernel")
    ax.barh(
        [i - 0.2 for i in y], [_median(f["bare_s"]) * 1e3 for f in nature], 0.4, label="bare XᵀX"
    )
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms (median)")
    ax.set_title("Nature CNN B=640: time per factor kernel")
    ax.legend()

    ax = axes[1]
    big = sorted((f for f in factors if f["flops"] >= 1e8), key=lambda f: f["ratio_to_bare"])
    ax.barh(range(len(big)), [f["ratio_to_bare"] for f in big],
            color=["tab:green" if f["ratio_to_bare"] <= TARGETS["factor_vs_bare"] else "tab:red" for f in big])  # fmt: skip
    ax.set_yticks(
        range(len(big)), [f"{f['layer']}-{f['net']} {f['variant']}" for f in big], fontsize=7
    )
    ax.axvline(TARGETS["factor_vs_bare"], color="k", ls="--", lw=1, label="target 1.5")
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("factor kernel / bare product")
    ax.set_title("Ratio to the bare BLAS product (≥ 0.1 GFLOP)")
    ax.legend()

    ax = axes[2]
    names, values, colors = [], [], []
    for u in sorted(g.get("update", []), key=lambda u: (u["net"], u["setting"])):
        names.append(f"update {u['net']} {u['setting']}\nACKTR/A2C (≤ 1.25)")
        values.append(u["ratio"])
        colors.append("tab:green" if u["ratio"] <= TARGETS["update_ratio"] else "tab:red")
    for t in sorted(g.get("trainer", []), key=lambda t: t["setting"]):
        target, ok = trainer_verdict(t)
        names.append(f"trainer {t['setting']}\nsteps/s K-FAC/A2C ({target})")
        values.append(t["ratio"])
        colors.append("tab:grey" if ok is None else "tab:green" if ok else "tab:red")
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), names, fontsize=7, rotation=30, ha="right")
    ax.axhline(1.25, color="k", ls="--", lw=1)
    ax.axhline(0.8, color="k", ls=":", lw=1)
    ax.axhline(1.0, color="grey", lw=0.5)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_title("ACKTR vs A2C (same session, interleaved)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    store.write_atomic(path, buffer.getvalue())
    return True
