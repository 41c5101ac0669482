"""``fidelity.csv`` (tidy: one row per reference × factors × variant × damping_mode × damping ×
layer), the figure, and writing them (all files or none).

Columns (``COLUMNS``; blank = not applicable):

- run context: env, checkpoint (run directory or ``initial``), step, seed, batch
- row key: reference (``true-fisher`` | ``sampled-fisher``: the exact F the row is measured
  against), factors (``batch`` | ``running-K``; blank on the exact rows), fisher_type (``sampled``
  | ``empirical``: the pass the K-FAC side is built from; blank on the exact rows), variant (a registered
  variant, or ``exact-block-diagonal`` / ``sampled-fisher`` with damping_mode ``exact``),
  damping_mode, damping (λ of ``KfacConfig``), reference_damping (λ_ref of the exact
  (F + λ_ref I)⁻¹), eigen_clip (τ; acts in ``eigen`` mode only), running_init and stats_decay
  (the running average's start rule and decay; ``running-K`` rows only), layer (K-FAC layer name
  or ``network``), params
- approximation: block_rel_error = ‖F − F̃‖_F/‖F‖_F (network: block-diagonal F̃ against the full F;
  ekfac rows: F̃ = Q diag(s) Qᵀ in the Kronecker eigenbasis Q, ``eigenbasis.py``), block_error_se, block_error_method (dense | probes), block_error_probes
- direction: cosine, norm_ratio (‖d‖/‖d*‖), kl_exact_direction (½ d*ᵀFd*), kl_variant_direction
  (½ dᵀFd), kl_kfac_model (½⟨d, g⟩: the KL the trust region assumes)
- clipping: A_clipped, G_clipped (eigenvalues ≤ τ zeroed), bias_G_clipped (split bias), A_dim, G_dim
- solver: cg_iters (0: direct solve, dense or row space), cg_residual (‖b − (F + λI)x‖/‖b‖); error
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kfac_bench.atomic import naming
from kfac_bench.fidelity.rows import CROSS_VARIANT, EXACT_MODE, NETWORK, REFERENCE_VARIANT

COLUMNS = [
    "env",
    "checkpoint",
    "step",
    "seed",
    "batch",
    "reference",
    "factors",
    "fisher_type",
    "variant",
    "damping_mode",
    "damping",
    "reference_damping",
    "eigen_clip",
    "running_init",
    "stats_decay",
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


def csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    return csv_text(rows).encode()


def _label(row: dict[str, Any]) -> str:
    """Heatmap row label: the variant, with its factor set unless it is this batch's and its
    Fisher type unless sampled."""
    if row["damping_mode"] == EXACT_MODE:
        return row["variant"]
    tags = [row.get("factors"), row.get("fisher_type")]
    tags = [t for t in tags if t not in (None, "", "batch", "sampled")]
    return f"{row['variant']} [{', '.join(tags)}]" if tags else row["variant"]


def cosine_figure(rows: list[dict[str, Any]], title: str):
    """Heatmaps of cosine(d, d*): label × layer; panel rows reference × λ, columns damping mode.

    Returns the matplotlib Figure (Agg). Every panel starts with the exact rows of its reference:
    ``exact-block-diagonal`` (network cell; layers are 1 by definition) and, against
    ``true-fisher``, ``sampled-fisher`` (the sampled reference's own directions).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    valid = [r for r in rows if "cosine" in r]
    measured = [r for r in valid if r["damping_mode"] != EXACT_MODE]
    exact = [r for r in valid if r["damping_mode"] == EXACT_MODE]
    references = list(dict.fromkeys(r.get("reference", "") for r in rows))
    modes = list(dict.fromkeys(r["damping_mode"] for r in measured))
    dampings = list(dict.fromkeys(r["damping"] for r in measured))
    layers = list(dict.fromkeys(r["layer"] for r in valid if r["layer"] != NETWORK))
    layers.append(NETWORK)
    exact_labels = [
        v for v in (REFERENCE_VARIANT, CROSS_VARIANT) if any(_label(r) == v for r in exact)
    ]
    labels = exact_labels + list(dict.fromkeys(_label(r) for r in measured))
    values = [r["cosine"] for r in valid if not math.isnan(r["cosine"])]
    low = min([*values, 0.0])
    panels = [(ref, lam) for ref in references for lam in dampings]

    fig, axes = plt.subplots(
        len(panels),
        len(modes),
        figsize=(2.4 + 0.9 * len(layers) * len(modes), 0.9 + 0.42 * len(labels) * len(panels)),
        squeeze=False,
        constrained_layout=True,
    )
    image = None
    for i, (ref, lam) in enumerate(panels):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            grid = np.full((len(labels), len(layers)), np.nan)
            for r in valid:
                if r.get("reference", "") != ref or r["damping"] != lam:
                    continue
                if r["damping_mode"] in (mode, EXACT_MODE):
                    grid[labels.index(_label(r)), layers.index(r["layer"])] = r["cosine"]
            image = ax.imshow(grid, vmin=low, vmax=1.0, cmap="viridis", aspect="auto")
            for (y, x), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    color = "black" if v > low + 0.6 * (1 - low) else "white"
                    ax.text(x, y, f"{v:.3f}", ha="center", va="center", fontsize=7, color=color)
            ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(labels)), labels if j == 0 else [""] * len(labels), fontsize=8)
            ax.set_title(f"vs {ref}: {mode}, λ={lam:g}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="cosine(direction, exact reference's)")
    return fig


def figure_files(stem: str, rows: list[dict[str, Any]], title: str) -> dict[str, bytes]:
    """``{<stem>.png: …, <stem>.svg: …}`` rendered in memory."""
    import matplotlib.pyplot as plt

    fig = cosine_figure(rows, title)
    files = {}
    try:
        for suffix, options in (("png", {"dpi": 150}), ("svg", {})):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=suffix, **options)
            files[f"{stem}.{suffix}"] = buffer.getvalue()
    finally:
        plt.close(fig)
    return files


def _unwritable(path: Path) -> int | None:
    """The errno a write under the existing directory ``path`` would fail with, if known."""
    if not path.is_dir():
        return errno.ENOTDIR
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return errno.EROFS
    if not os.access(path, os.W_OK | os.X_OK):
        return errno.EACCES
    return None


def check_writable(out: Path, first: str) -> None:
    """Fail early (before any measuring) when files cannot be written under ``out``.

    Raises an OSError naming ``out/first`` with the action ``write`` (the command line prints
    ``cannot write <file>: <reason>``) when ``out`` or its nearest existing ancestor is a file,
    read-only or not writable. Creates nothing.
    """
    out = Path(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    code = _unwritable(existing)
    if code is not None:
        raise naming(OSError(code, os.strerror(code)), out / first, "write")


def write_outputs(out: Path, files: dict[str, bytes]) -> list[Path]:
    """Write every file of ``files`` into ``out``, or none of them.

    Each file goes to a temp file in ``out`` (fsync'd); only when all are written are they renamed
    into place (``os.replace``). On any failure the temp files and every directory this call
    created are removed, so a full or read-only disk leaves ``out`` as it was. Errors are OSErrors
    naming the final path, action ``write``.
    """
    out = Path(out)
    created = next((p for p in [*reversed(out.parents), out] if not p.exists()), None)
    temps: dict[Path, Path] = {}
    target = out / next(iter(files), "")
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                target = out / name
                fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
                temps[target] = Path(tmp)
                with os.fdopen(fd, "wb") as handle:
                    os.fchmod(handle.fileno(), 0o644)
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            for target, tmp in temps.items():
                os.replace(tmp, target)
        except OSError as error:
            raise naming(error, target, "write") from error
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return list(temps)
