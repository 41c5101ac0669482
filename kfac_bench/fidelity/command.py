"""One fidelity measurement (:func:`fidelity`) and :func:`run_for_run_dir` (the sweep runner's
entry point). The command line (flags, ``run``) is ``arguments.py``.

Order of work: every value is checked against its domain (:func:`validate`: one line naming the
flag, the value and the allowed range), the policy source is loaded, the output directory is
checked for writability — all before the (minutes-long) measurement; the CSV and figures are then
written all or none (``output.write_outputs``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import variants
from kfac_bench.config import MAX_SEED
from kfac_bench.curvature.inverse import torch_threads
from kfac_bench.domains import AtLeast, Domain, NonNegative, Positive
from kfac_bench.fidelity.batch import (
    Rollouts,
    Source,
    build_measured_policy,
    empirical_loss,
    fisher_problem,
    load_source,
    training_gradient,
)
from kfac_bench.fidelity.compare import (
    DAMPING_MODES,
    FISHER_TYPES,
    REFERENCES,
    Settings,
    check_choices,
    measure,
)
from kfac_bench.fidelity.eigenbasis import EKFAC
from kfac_bench.fidelity.output import check_writable, csv_bytes, figure_files, write_outputs
from kfac_bench.fidelity.running import running_factor_set
from kfac_bench.rl.envs import env_family, make_env
from kfac_bench.rl.trainer import resolve_device
from kfac_bench.store import env_slug

# Default batch per env family: a minute on two CPU cores for the MLP and the MinAtar CNN.
DEFAULT_BATCH = {"classic": 256, "generic": 256, "continuous": 256, "minatar": 128, "atari": 256}
CSV_NAME = "fidelity.csv"
FIGURE_STEM = "fidelity"


@dataclass(frozen=True)
class Request:
    """Everything one fidelity measurement needs (the CLI's arguments, resolved)."""

    env: str | None = None
    checkpoint: Path | None = None
    batch: int | None = None
    variants: tuple[str, ...] | None = None  # None: every registered variant
    damping_modes: tuple[str, ...] = DAMPING_MODES
    dampings: tuple[float, ...] | None = None  # None: the config's kfac.damping
    eigen_clip: float | None = None  # None: the config's kfac.eigen_clip
    budget_s: float = 60.0
    out: Path | None = None
    seed: int = 0
    probes: int = 64
    cg_iters: int | None = None
    device: str | None = None  # None: the run config's ``device`` (cpu unless the run said so)
    max_jacobian_mb: float = 4096.0
    reference: bool = True
    figure: bool = True
    references: tuple[str, ...] = REFERENCES
    running_updates: int = 0  # K > 0: also the running factors after K Fisher batches
    inverse_staleness: tuple[int, ...] = ()  # s: also the running-K factors as of step K − s
    fisher_types: tuple[str, ...] = ("sampled",)  # the passes the K-FAC side is built from


# Request field -> (flag, domain); None values mean "the default" and are not checked.
DOMAINS: dict[str, tuple[str, Domain]] = {
    "batch": ("--batch", AtLeast(1)),
    "dampings": ("--damping", Positive()),
    "eigen_clip": ("--eigen-clip", NonNegative()),
    "budget_s": ("--budget", Positive()),
    "seed": ("--seed", AtLeast(0, MAX_SEED)),
    "probes": ("--probes", AtLeast(1)),
    "cg_iters": ("--cg-iters", AtLeast(1)),
    "max_jacobian_mb": ("--max-jacobian-mb", NonNegative()),
    "running_updates": ("--running-updates", AtLeast(0)),
    "inverse_staleness": ("--inverse-staleness", AtLeast(1)),
}


def validate(request: Request) -> None:
    """Every value in its domain, every name known; ConfigError / ValueError (one line) else."""
    for field, (flag, domain) in DOMAINS.items():
        value = getattr(request, field)
        for item in value if isinstance(value, tuple) else (value,):
            if item is not None:
                domain.check(flag, item)
    for name in request.variants or ():
        variants.get(name)  # unknown -> ValueError listing the valid ones
    check_choices(
        request.damping_modes, request.references, request.fisher_types, "--fisher-types: "
    )
    if not request.references:
        raise ValueError(f"give at least one reference ({', '.join(REFERENCES)})")
    too_stale = [s for s in request.inverse_staleness if s >= request.running_updates]
    if too_stale:
        raise ValueError(
            f"--inverse-staleness {too_stale[0]} needs --running-updates K > {too_stale[0]} "
            f"(got K = {request.running_updates})"
        )
    if not request.fisher_types:
        raise ValueError(f"--fisher-types: give at least one of {', '.join(FISHER_TYPES)}")
    named = (
        ("--references", request.references),
        ("--variants", request.variants),
        ("--fisher-types", request.fisher_types),
    )
    for flag, names in named:
        twice = sorted({n for n in names or () if list(names).count(n) > 1})
        if twice:
            raise ValueError(f"{flag}: {', '.join(twice)} given more than once")


def default_out(request: Request, env_id: str) -> Path:
    """The checkpoint's run directory, else ``runs/fidelity/<env-slug>/``."""
    if request.out is not None:
        return Path(request.out)
    if request.checkpoint is not None:
        path = Path(request.checkpoint)
        return path if path.is_dir() else path.parent
    return Path("runs/fidelity") / env_slug(env_id)


def fidelity(request: Request, log: Callable[[str], None] | None = None) -> Path:
    """Measure, write ``fidelity.csv`` (+ ``fidelity.png``/``.svg``), return the CSV path.

    Runs with the config's ``torch_threads`` (as the trainer does; 1 for classic and continuous
    control).
    Raises ConfigError/ValueError (bad input) or OSError (cannot write) before measuring.
    """
    validate(request)
    source = load_source(request.env, request.checkpoint, request.seed)
    out = default_out(request, source.config.env)
    check_writable(out, CSV_NAME)
    with torch_threads(source.config.torch_threads):
        return _fidelity(request, source, out, log)


def _fidelity(
    request: Request, source: Source, out: Path, log: Callable[[str], None] | None
) -> Path:
    say = log or (lambda message: None)
    start = time.monotonic()
    config = source.config
    batch = DEFAULT_BATCH[env_family(config.env)] if request.batch is None else request.batch
    device = resolve_device(request.device or config.device)
    kfac = config.kfac
    if request.dampings is not None:
        # an explicit λ grid: per-factor γ follows λ (γ = √λ) so the rows form one sweep
        kfac = dataclasses.replace(kfac, factor_damping=None)
    settings = Settings(
        variants=tuple(request.variants or variants.names()),
        damping_modes=tuple(request.damping_modes),
        dampings=tuple(request.dampings or (kfac.damping,)),
        eigen_clip=kfac.eigen_clip if request.eigen_clip is None else request.eigen_clip,
        references=tuple(request.references),
        fisher_types=tuple(request.fisher_types),
        probes=request.probes,
        min_probes=min(8, request.probes),
        cg_max_iter=request.cg_iters,
        max_jacobian_mb=request.max_jacobian_mb,
        budget_s=request.budget_s,
        reference=request.reference,
        seed=request.seed,
    )

    env = make_env(config.env, min(config.rollout.n_envs, batch), training=True, atari=config.atari)
    k = request.running_updates
    try:
        policy = build_measured_policy(source, env, request.seed, device)
        say(f"{config.env}: {source.label} policy ({policy.arch}), batch {batch}, device {device}")
        rollout = Rollouts(policy, env, config, request.seed, source.obs_norm).next(batch)
        older = Rollouts(policy, env, config, request.seed + 1, source.obs_norm) if k > 1 else None
        history = [older.next(batch) for _ in range(k - 1)]
    finally:
        env.close()
    problem = fisher_problem(policy, rollout, config)
    problems = [*(fisher_problem(policy, r, config) for r in history), problem]
    g = training_gradient(policy, problem.slots, rollout, config)
    say(
        f"[{time.monotonic() - start:6.1f}s] collected {batch} observations"
        + (f" (+ {k - 1} older batches for the running factors)" if k > 1 else "")
    )
    extra = []
    ekfac = EKFAC in settings.damping_modes
    for kind in settings.fisher_types if k > 0 else ():
        losses = None
        if kind == "empirical":
            losses = [empirical_loss(r, config, problem.log_std) for r in [*history, rollout]]
        names = settings.variants
        extra.append(running_factor_set(names, problems, kfac, losses, kind, ekfac))
        for stale in request.inverse_staleness:
            extra.append(
                running_factor_set(names, problems, kfac, losses, kind, ekfac, staleness=stale)
            )
    rows = measure(
        problem,
        g,
        kfac,
        settings,
        log=say,
        started=start,
        extra_factors=tuple(extra),
        empirical_loss=empirical_loss(rollout, config, problem.log_std),
    )

    context = {
        "env": config.env,
        "checkpoint": source.label,
        "step": source.step,
        "seed": request.seed,
        "batch": batch,
    }
    rows = [{**context, **row} for row in rows]
    files = {CSV_NAME: csv_bytes(rows)}
    if request.figure:
        title = f"{config.env} — {source.label} (step {source.step}), batch {batch}"
        files.update(figure_files(FIGURE_STEM, rows, title))
    written = write_outputs(out, files)
    say(f"wrote {', '.join(str(p) for p in written)} ({time.monotonic() - start:.1f}s total)")
    return out / CSV_NAME


def run_for_run_dir(
    run_dir: Path,
    *,
    batch: int | None = None,
    budget_s: float = 60,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Default comparison on a finished run's checkpoint -> ``<run_dir>/fidelity.csv`` (+ figure).

    Every variant × every damping mode at the run's λ and τ, on the initial seed 0 batch of the
    trained policy. Raises FileNotFoundError when ``<run_dir>/checkpoint.pt`` is missing.
    """
    run_dir = Path(run_dir)
    request = Request(checkpoint=run_dir, batch=batch, budget_s=budget_s, out=run_dir)
    return fidelity(request, log=log)
