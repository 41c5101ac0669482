"""The sweep's plan: the runs a validated spec describes, and what to do with each of them.

:func:`plan_runs` expands a :class:`~kfac_bench.sweep.spec.SweepSpec` into
``envs × (variants × grid + controls × non-K-FAC grid) × seeds`` :class:`PlannedRun` s (at most
``MAX_RUNS``, counted before anything is expanded), each named
``store.run_name(label, env, seed, axes)``, e.g. ``paper__CartPole-v1__s0__damping_mode-eigen``,
with its fully resolved config:

* A variant run's config is ``build_config(env, variant, seed, preset, steps, [set] + axes)``:
  family base, then the preset, then ``[set]``, then its grid axes.
* A control run (``controls``, e.g. ``"a2c"``) is layered as family base, then the spec's preset
  (or the family default), then ``[set]``, then the control preset (whose own keys, the
  ``optim.*`` of RMSprop, win over ``[set]``), then the grid axes whose key does **not** start
  with ``kfac.`` — K-FAC axes mean nothing to a first-order optimiser, so controls are not
  multiplied by them. Its label is ``a2c``; its ``variant`` is recorded as ``"paper"`` (unused).

:func:`inspect_run` then reads each run's directory through :mod:`kfac_bench.store` into an
:class:`Entry`: ``done``/``diverged`` runs are results and are skipped, interrupted runs resume,
``failed`` ones rerun only with ``--retry-failed``, and a directory holding another config (or an
unreadable one) is reported failed and never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfac_bench import config as config_mod
from kfac_bench import store
from kfac_bench.config import ConfigError, RunConfig
from kfac_bench.presets import FAMILY_DEFAULT_PRESET, PRESETS, build_config
from kfac_bench.rl.envs import env_family
from kfac_bench.sweep.spec import MAX_RUNS, SpecError, SweepSpec

CONTROL_VARIANT = "paper"  # recorded in a control run's config; a first-order run ignores it
# Rough single-thread env steps/s per family on a laptop core (see runs/quick.toml); only used to
# order the queue longest-first and for the dry run's estimate.
FAMILY_STEPS_PER_SECOND = {"classic": 20_000, "generic": 10_000, "minatar": 5_000, "atari": 1_000}
FIDELITY_MISSING = (
    "kfac_bench.fidelity is not available (module missing); the run itself is unaffected"
)
NOT_RETRYABLE = ("config changed", "unreadable")  # --retry-failed cannot help these
_SPEC_CHANGED = (
    "the spec (or a code default) changed since this run started; restore it, or move the run "
    "directory away to start over"
)


# ---------------------------------------------------------------------------------------------
# the runs of a spec


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its name, identity and fully resolved config."""

    name: str
    label: str
    variant: str
    env: str
    seed: int
    axes: dict[str, Any]
    config: RunConfig
    control: str | None = None  # the control preset's name, None for a variant run

    @property
    def preset(self) -> str:
        return self.config.preset


def _combos(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def _jobs(spec: SweepSpec, env: str) -> list[tuple[str | None, str, str | None, dict, dict]]:
    """``(control, variant, preset, overrides, axes)`` for every label × axes of one env."""
    family = env_family(env)
    base_preset = spec.preset or FAMILY_DEFAULT_PRESET[family]
    control_grid = {k: v for k, v in spec.grid.items() if not k.startswith("kfac.")}
    jobs: list[tuple[str | None, str, str | None, dict, dict]] = []
    for variant in spec.variants:
        for axes in _combos(spec.grid):
            jobs.append((None, variant, spec.preset, {**spec.overrides, **axes}, axes))
    for control in spec.controls:
        for axes in _combos(control_grid):
            shared = PRESETS[base_preset].values_for(env, family)
            shared.pop("total_steps", None)  # the budget is the spec's, not the base preset's
            overrides = {
                **shared,
                **spec.overrides,
                **PRESETS[control].values_for(env, family),
                **axes,
            }
            jobs.append((control, CONTROL_VARIANT, control, overrides, axes))
    return jobs


def run_count(spec: SweepSpec) -> int:
    """``envs × (variants × grid + controls × non-K-FAC grid) × seeds``, without expanding."""
    full = math.prod(len(v) for v in spec.grid.values())
    control = math.prod(len(v) for k, v in spec.grid.items() if not k.startswith("kfac."))
    labels = len(spec.variants) * full + len(spec.controls) * control
    return len(spec.envs) * labels * len(spec.seeds)


def plan_runs(spec: SweepSpec) -> list[PlannedRun]:
    """Every run's config via ``build_config``, in spec order (env, label, axes, seed).

    Problems (more than ``MAX_RUNS`` runs, a config its domains refuse, two runs with one name)
    are collected into one SpecError, one line each."""
    count = run_count(spec)
    if count > MAX_RUNS:
        raise SpecError(
            spec.path,
            [
                f"the spec describes {count:,} runs; a sweep holds at most {MAX_RUNS:,} "
                "(split it into several specs)"
            ],
        )
    problems: list[str] = []
    runs: list[PlannedRun] = []
    for env in spec.envs:
        budget = spec.steps_per_env.get(env, spec.steps)
        for control, variant, preset, overrides, axes in _jobs(spec, env):
            try:
                # Built once per (env, label, axes); the seed is a plain field of RunConfig.
                base = build_config(
                    env,
                    variant=variant,
                    seed=spec.seeds[0],
                    preset=preset,
                    total_steps=budget,
                    overrides=overrides,
                )
            except (ConfigError, ValueError) as error:
                message = f"{env} / {control or variant}: {str(error).splitlines()[0]}"
                if message not in problems:
                    problems.append(message)
                continue
            for seed in spec.seeds:
                try:  # every seed, not only the first, is checked against its domain
                    config = config_mod.check_domains(dataclasses.replace(base, seed=seed))
                except ConfigError as error:
                    if str(error) not in problems:
                        problems.append(str(error))
                    continue
                name = store.run_name(config.label, env, seed, axes)
                runs.append(
                    PlannedRun(name, config.label, variant, env, seed, dict(axes), config, control)
                )
    seen: set[str] = set()
    for run in runs:
        if run.name in seen:
            problems.append(
                f"duplicate run {run.name!r} (two runs resolve to the same name; "
                "check grid values that differ only in punctuation)"
            )
        seen.add(run.name)
    if problems:
        raise SpecError(spec.path, problems)
    return runs


def planned_steps(config: RunConfig) -> int:
    """The steps a run actually ends at: the budget rounded up to whole batches."""
    batch = config.rollout.n_envs * config.rollout.n_steps
    return -(-config.total_steps // batch) * batch


# ---------------------------------------------------------------------------------------------
# the state of each run, from its directory


@dataclass
class Entry:
    """One run as the sweep sees it; ``todo`` runs are handed to a worker."""

    run: PlannedRun
    run_dir: Path
    state: str  # pending | running | done | failed | diverged
    steps: int = 0
    error: str | None = None
    todo: bool = True
    note: str = ""  # dry-run / display remark: "resume at 12,800", "retry", ...
    target: int = 0
    fidelity: dict[str, Any] | None = None
    fps: float = 0.0
    retry_at: float = 0.0
    lock_waits: int = 0

    def record(self) -> dict[str, Any]:
        """This run's item in ``sweep.json``."""
        r = self.run
        item = {
            "name": r.name,
            "label": r.label,
            "variant": r.variant,
            "env": r.env,
            "seed": r.seed,
            "axes": r.axes,
            "preset": r.preset,
            "state": self.state,
            "steps": self.steps,
            "total_steps": r.config.total_steps,
            "error": self.error,
        }
        if self.fidelity is not None:
            item["fidelity"] = self.fidelity
        return item


def inspect_run(run: PlannedRun, run_dir: Path, *, retry_failed: bool) -> Entry:
    """What to do with one run, from ``config.json`` and ``status.json`` in its directory."""
    entry = Entry(run, run_dir, "pending", target=planned_steps(run.config))
    try:
        diffs = store.config_drift(run_dir, run.config)
        if diffs:
            entry.state, entry.todo, entry.note = "failed", False, "config changed"
            entry.error = _local(store.drift_error(run_dir, diffs, _SPEC_CHANGED))
            return entry
        status = store.read_status(run_dir)
    except (OSError, ValueError) as error:
        entry.state, entry.todo, entry.note = "failed", False, "unreadable"
        entry.error = _local(error) if isinstance(error, store.RunDirError) else str(error)
        return entry
    if status is None:
        return entry
    entry.steps, entry.error = status.steps, status.error
    if status.final:
        entry.state, entry.todo, entry.target = status.state.value, False, entry.steps
    elif status.state is store.RunState.FAILED:
        entry.state = "failed" if not retry_failed else "pending"
        entry.todo = retry_failed
        entry.note = "retry" if retry_failed else "--retry-failed to rerun"
        if not retry_failed:
            entry.target = entry.steps
    else:
        entry.error = None
        entry.note = f"resume at {entry.steps:,}" if entry.steps else "restart"
    return entry


def _local(error: store.RunDirError) -> str:
    """The error with the file named inside its run directory (the table shows the run)."""
    return f"{error.path.name} {error.problem}; {error.action}"


def plan_fidelity(entries: list[Entry]) -> None:
    """Fidelity for finished ACKTR runs: scheduled unless ``fidelity.csv`` is already there."""
    available = importlib.util.find_spec("kfac_bench.fidelity") is not None
    for e in entries:
        if e.run.config.optim.algo != "acktr":
            continue
        if not available:
            e.fidelity = {"state": "failed", "error": FIDELITY_MISSING}
        elif e.state == "done" and not (e.run_dir / "fidelity.csv").exists():
            e.todo, e.note = True, "fidelity only"
        elif e.state == "done":
            e.fidelity = {"state": "done", "error": None}


def estimated_seconds(e: Entry) -> float:
    """Worker seconds the run still needs at one CPU thread (queue order, dry-run estimate)."""
    rate = FAMILY_STEPS_PER_SECOND.get(env_family(e.run.env), 5_000)
    return max(0, e.target - e.steps) / rate + 3.0  # + process start-up


def status_or_none(run_dir: Path) -> store.RunStatus | None:
    """The run's status, or None when it has none or it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        return store.read_status(run_dir)
    return None
