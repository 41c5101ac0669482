"""The settings and targets of the cost benchmarks (``make bench``), shared by the benchmark
suite (tests/benchmarks/), the report renderer and the config tests."""

from __future__ import annotations

import math
import statistics
from typing import Any

#: The documented fast setting: dotted overrides on top of any preset (`[set]` in a spec or
#: `--set` on the CLI). Each knob trades fidelity for time, so none is on by default:
#:
#: * ``kfac.stats_batch_fraction`` 0.25: factor statistics from the first quarter of the batch
#:   (160 of 640 rows on Atari), rescaled so ĝ keeps the full batch's scale. Their GEMMs shrink
#:   4× (full-batch statistics cost about 1.4 A2C updates on the Nature CNN; the Fisher backward
#:   itself still runs on the whole batch, it shares the training forward).
#: * ``kfac.stats_every`` 4: the Fisher pass and statistics every fourth update (KFAC-PyTorch uses
#:   10, ``optimizers/kfac.py`` TCov); with stats decay 0.99 the running average then spans about
#:   400 updates instead of 100.
#: * ``kfac.async_inverse`` with ``kfac.async_staleness`` 5: the eigendecompositions (syevd of the
#:   3137² fc factor: 2 s on one quiet core, up to 60 s on two contended ones) run on a background
#:   thread from a snapshot of the factors and are used exactly 5 updates later
#:   (openai/baselines' ``async`` eigen queue, ``baselines/acktr/kfac.py`` 819-866, unbounded and
#:   nondeterministic there). This hides the decompositions only where a core is idle (a GPU
#:   trainer, an env-bound one); on the 2-core CI machine the training thread pays the contention.
#: * ``kfac.inverse_threads`` 1: decompositions on one thread, immune to the multi-threaded syevd
#:   stalls of a shared machine and leaving the training thread its own cores.
FAST: dict[str, Any] = {
    "kfac.stats_batch_fraction": 0.25,
    "kfac.stats_every": 4,
    "kfac.async_inverse": True,
    "kfac.async_staleness": 5,
    "kfac.inverse_threads": 1,
}

#: Not a speed knob but the other damping the harness sweeps (DESIGN.md §3): π-corrected Tikhonov
#: (Martens & Grosse 2015 §6.3) needs one Cholesky inverse per factor instead of an eigh, and its
#: step is G⁻¹ M A⁻¹ (two products per layer instead of the eigenbasis' four). Reported beside
#: ``fast`` so its cost is visible; it changes the preconditioner, so it is no part of FAST.
FAST_TIKHONOV_PI: dict[str, Any] = {**FAST, "kfac.damping_mode": "tikhonov-pi"}

SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": FAST,
    "fast-tikhonov-pi": FAST_TIKHONOV_PI,
}

TARGETS = {
    "update_ratio": 1.25,  # ACKTR update / A2C update (Wu et al. 2017: 10–25 % more)
    "update_ratio_aim": 1.10,
    "factor_vs_bare": 1.5,  # factor statistic / bare XᵀX of the same shapes
    # factor statistic / its syrk bound: half the bare GEMM's time (a symmetric product needs
    # half the FLOPs, rows·cols², at the GEMM's rate) (issue 16)
    "factor_vs_syrk": 1.2,
    "trainer_ratio": 0.8,  # K-FAC trainer env-steps/s / A2C's, MinAtar family default
    "trainer_ratio_atari": 0.6,  # the same on Atari Breakout, Atari family default (issue 16)
}


def median_of(values) -> float:
    """Median of the values that are not None/NaN (NaN when none are)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def trainer_target(t: dict) -> float | None:
    """A trainer case's target ratio (None: reported only); older JSONs had MinAtar only."""
    return t["target"] if "target" in t else TARGETS["trainer_ratio"]


def trainer_verdict(t: dict) -> tuple[str, bool | None]:
    """A trainer case's target as text (``≥ 0.8`` or ``reported``) and whether its ratio meets
    it (None when it is only reported)."""
    target = trainer_target(t)
    if target is None:
        return "reported", None
    return f"≥ {target}", t["ratio"] >= target


def syrk_bound_ratio(syrk_s: float, gemm_s: float) -> float:
    """A symmetric product's time over its syrk bound, half the GEMM's time of the same shape."""
    return 2 * syrk_s / gemm_s
