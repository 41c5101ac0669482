"""``fidelity.csv`` (tidy: one row per variant × damping_mode × damping × layer) and the figure.

Columns (``COLUMNS``; blank = not applicable):

- run context: env, checkpoint (run directory or ``initial``), step, seed, batch
- row key: variant, damping_mode, damping (λ of ``KfacConfig``), reference_damping (λ_ref of the
  exact (F + λ_ref I)⁻¹), eigen_clip (τ; acts in ``eigen`` mode only), layer (K-FAC layer name
  or ``network``), params
- approximation: block_rel_error = ‖F − F̃‖_F/‖F‖_F (network: block-diagonal F̃ against the full F),
  block_error_se, block_error_method (dense | probes), block_error_probes
- direction: cosine, norm_ratio (‖d‖/‖d*‖), kl_exact_direction (½ d*ᵀFd*), kl_variant_direction
  (½ dᵀFd), kl_kfac_model (½⟨d, g⟩: the KL the trust region assumes)
- clipping: A_clipped, G_clipped (eigenvalues ≤ τ zeroed), bias_G_clipped (split bias), A_dim, G_dim
- solver: cg_iters (0: dense solve), cg_residual (‖b − (F + λI)x‖/‖b‖); error
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from kfac_bench import store
from kfac_bench.fidelity.compare import NETWORK, REFERENCE_VARIANT

COLUMNS = [
    "env",
    "checkpoint",
    "step",
    "seed",
    "batch",
    "variant",
    "damping_mode",
    "damping",
    "reference_damping",
    "eigen_clip",
    "layer",
    "params",
    "block_rel_error",
    "block_error_se",
    "block_error_method",
    "block_error_probes",
    "cosine",
    "norm_ratio",
    "kl_exact_direction",
    "kl_variant_direction",
    "kl_kfac_model",
    "A_clipped",
    "G_clipped",
    "bias_G_clipped",
    "A_dim",
    "G_dim",
    "cg_iters",
    "cg_residual",
    "error",
]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The CSV document (header ``COLUMNS``; unknown keys are an error)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        extra = set(row) - set(COLUMNS)
        if extra:
            raise KeyError(f"fidelity row has unknown columns: {sorted(extra)}")
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    return buffer.getvalue()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    store.write_atomic(path, csv_text(rows).encode())


def cosine_figure(rows: list[dict[str, Any]], title: str):
    """Heatmaps of cosine(d, d*): variant × layer, one panel per damping mode (rows: λ).

    Returns the matplotlib Figure (Agg). The ``exact-block-diagonal`` reference is drawn as an
    extra first row of every panel (its network cosine; layers are 1 by definition).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    measured = [r for r in rows if r["variant"] != REFERENCE_VARIANT and "cosine" in r]
    reference = {r["damping"]: r["cosine"] for r in rows if r["variant"] == REFERENCE_VARIANT}
    variants = list(dict.fromkeys(r["variant"] for r in measured))
    modes = list(dict.fromkeys(r["damping_mode"] for r in measured))
    dampings = list(dict.fromkeys(r["damping"] for r in measured))
    layers = list(dict.fromkeys(r["layer"] for r in measured if r["layer"] != NETWORK))
    layers.append(NETWORK)
    labels = ([REFERENCE_VARIANT] if reference else []) + variants
    values = [r["cosine"] for r in measured if not math.isnan(r["cosine"])]
    low = min([*values, *reference.values(), 0.0]) if values else 0.0

    fig, axes = plt.subplots(
        len(dampings),
        len(modes),
        figsize=(1.2 + 0.9 * len(layers) * len(modes), 0.6 + 0.45 * len(labels) * len(dampings)),
        squeeze=False,
        constrained_layout=True,
    )
    image = None
    for i, lam in enumerate(dampings):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            grid = np.full((len(labels), len(layers)), np.nan)
            for r in measured:
                if r["damping"] == lam and r["damping_mode"] == mode:
                    grid[labels.index(r["variant"]), layers.index(r["layer"])] = r["cosine"]
            if reference:
                grid[0, -1] = reference.get(lam, np.nan)
            image = ax.imshow(grid, vmin=low, vmax=1.0, cmap="viridis", aspect="auto")
            for (y, x), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    color = "black" if v > low + 0.6 * (1 - low) else "white"
                    ax.text(x, y, f"{v:.3f}", ha="center", va="center", fontsize=7, color=color)
            ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(labels)), labels if j == 0 else [""] * len(labels), fontsize=8)
            ax.set_title(f"{mode}, λ={lam:g}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="cosine(K-FAC direction, exact)")
    return fig


def write_figure(path_stem: Path, rows: list[dict[str, Any]], title: str) -> list[Path]:
    """``<stem>.png`` and ``<stem>.svg`` (atomic writes); returns the paths."""
    import matplotlib.pyplot as plt

    fig = cosine_figure(rows, title)
    paths = []
    try:
        for suffix, options in ((".png", {"dpi": 150}), (".svg", {})):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=suffix[1:], **options)
            path = path_stem.with_suffix(suffix)
            store.write_atomic(path, buffer.getvalue())
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def network_summary(rows: list[dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    """(variant, damping_mode, damping, cosine) of the network rows, in row order."""
    return [
        (r["variant"], r["damping_mode"], r["damping"], r.get("cosine", math.nan))
        for r in rows
        if r["layer"] == NETWORK
    ]
