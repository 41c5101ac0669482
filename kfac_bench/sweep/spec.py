"""Sweep specs: read and validate ``runs/<name>.toml`` (the file format; lowest sweep layer).

:func:`load_spec` gives a :class:`SweepSpec` whose every field is checked; expanding it into
runs with resolved configs is :func:`kfac_bench.sweep.plan.plan_runs`.

Format (TOML, read with :mod:`tomllib`)::

    name = "quick"                     # output directory runs/<name>/ (default: the file's stem)
    variants = ["paper", "baselines"]  # factor-statistic variants (`kfac-bench variants`)
    controls = ["a2c"]                 # first-order control presets run beside them (label "a2c")
    envs = ["CartPole-v1", "MinAtar/Breakout-v1"]   # Gymnasium ids
    seeds = [0, 1, 2]                  # or an int n meaning 0..n-1
    preset = "openai-baselines"        # optional; omitted: each env family's default preset
    steps = 100_000                    # env steps per run (optional: the preset/family default)
    fidelity = false                   # run kfac_bench.fidelity on each finished ACKTR run
    [steps_per_env]                    # per-environment budgets, override `steps`
    "MinAtar/Breakout-v1" = 300_000
    [set]                              # fixed dotted-key overrides for every run
    "log.checkpoint_every" = 20
    [grid]                             # extra axes, crossed (cartesian product); they appear in
    "kfac.damping_mode" = ["eigen", "tikhonov"]   # run names and in config.json "axes"
    [thresholds]                       # optional reward thresholds, copied to sweep.json
    "MinAtar/Breakout-v1" = 10.0

The runs it describes, their names and how each one's config is layered, are in
:mod:`kfac_bench.sweep.plan`.

Rules:

* Keys of ``[set]`` and ``[grid]`` are the dotted config keys of ``kfac-bench presets --keys``
  (quote them, ``"kfac.damping" = 0.03``; unquoted dotted keys, being TOML tables, work too).
  ``env``, ``variant``, ``seed`` and ``preset`` come from the spec's own fields and cannot be
  set there; the budget is ``steps`` / ``[steps_per_env]`` (``total_steps`` may be a grid axis).
  A key cannot be both in ``[set]`` and in ``[grid]``.
* Everything is checked before anything runs, and every problem is reported (one line each):
  bad TOML (line and column), unknown top-level keys, unknown variants / control presets /
  environment ids / presets / config keys (with the valid choices or close matches), wrong
  value types (each ``[set]`` and ``[grid]`` value against its config field), empty lists and
  axes, duplicate runs (a seed, variant, env or grid value listed twice), and ``seeds = n``
  beyond ``MAX_RUNS`` (the limit on the runs themselves is checked by the plan).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfac_bench import config as config_mod
from kfac_bench.config import ConfigError
from kfac_bench.presets import PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pyproject pins tomli for 3.10
    import tomli as tomllib

TOP_LEVEL_KEYS = tuple(  # in the order an "unknown key" error lists them
    "name variants controls envs seeds preset steps fidelity steps_per_env set grid thresholds".split()
)
# Config keys the spec's own fields decide; [set]/[grid] may not name them.
SPEC_OWNED_KEYS = {"env": "envs", "variant": "variants", "seed": "seeds", "preset": "preset"}
MAX_RUNS = 10_000  # runs a sweep may hold; a larger one is refused before it is expanded
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SpecError(ValueError):
    """One or more problems in a sweep spec; ``problems`` holds one line each."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        super().__init__(f"{self.path}: {self.problems[0]}" if self.problems else str(path))


@dataclass(frozen=True)
class SweepSpec:
    """A validated spec: every field checked, nothing expanded yet."""

    path: Path
    name: str
    raw: dict[str, Any]
    spec_hash: str
    variants: list[str]
    controls: list[str]
    envs: list[str]
    seeds: list[int]
    preset: str | None
    steps: int | None
    steps_per_env: dict[str, int]
    overrides: dict[str, Any]
    grid: dict[str, list[Any]]
    thresholds: dict[str, float]
    fidelity: bool


# ---------------------------------------------------------------------------------------------
# small checks


def _close(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unique(values: list[Any], where: str, problems: list[str]) -> list[Any]:
    """``values`` without repeats, in order; each repeat is reported as a duplicate run.

    Compared by equality, not hashing: grid values may be lists (``policy.hidden``)."""
    unique: list[Any] = []
    for value in values:
        if value in unique:
            problems.append(f"{where}: {value!r} is listed twice (duplicate runs)")
        else:
            unique.append(value)
    return unique


def _str_list(raw: dict, key: str, problems: list[str], *, required: bool) -> list[str] | None:
    """A non-empty list of strings without repeats (each repeat reported as a duplicate run)."""
    if key not in raw:
        if required:
            problems.append(f"`{key}` is missing (a non-empty list)")
        return None
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"`{key}` must be a list of strings, got {value!r}")
        return None
    if not value:
        problems.append(f"`{key}` is empty; list at least one (or leave the key out)")
        return None
    return _unique(value, f"`{key}`", problems)


def _check_config_key(section: str, key: str, problems: list[str]) -> Any | None:
    """The key's annotation, or None after reporting why it cannot be used in ``section``."""
    if key in SPEC_OWNED_KEYS:
        problems.append(
            f"[{section}] {key!r}: set by the spec's `{SPEC_OWNED_KEYS[key]}`, not by [{section}]"
        )
        return None
    if key == "total_steps" and section == "set":
        problems.append("[set] 'total_steps': use `steps` (and [steps_per_env]) for the budget")
        return None
    try:
        return config_mod.check_key(key)
    except ConfigError as error:
        problems.append(f"[{section}] {error}")
        return None


def _check_value(section: str, key: str, value: Any, tp: Any, problems: list[str]) -> bool:
    try:
        config_mod.coerce(key, value, tp)
    except ConfigError as error:
        problems.append(f"[{section}] {error}")
        return False
    return True


def _env_table(
    raw: dict, key: str, envs: list[str] | None, problems: list[str], *, kind: str
) -> dict[str, Any]:
    """``[steps_per_env]`` / ``[thresholds]``: env id -> positive int / number."""
    table = raw.get(key, {})
    if not isinstance(table, dict):
        problems.append(f"[{key}] must be a table of env id = value, got {table!r}")
        return {}
    out: dict[str, Any] = {}
    for env, value in table.items():
        if envs is not None and env not in envs:
            problems.append(
                f"[{key}] {env!r} is not in `envs`{_close(env, envs)}; envs: {', '.join(envs)}"
            )
            continue
        if kind == "steps":
            if not _is_int(value) or value <= 0:
                problems.append(f"[{key}] {env!r}: expected a positive integer, got {value!r}")
                continue
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            problems.append(f"[{key}] {env!r}: expected a number, got {value!r}")
            continue
        out[env] = value if kind == "steps" else float(value)
    return out


def control_algo(preset_name: str) -> str:
    """The optimiser a preset trains with (``acktr`` unless it is a first-order control)."""
    return str(PRESETS[preset_name].values.get("optim.algo", "acktr"))


# ---------------------------------------------------------------------------------------------
# the sections of a spec, each checked on its own (problems appended, never raised)


def _labels(raw: dict, problems: list[str]) -> tuple[list[str], list[str]]:
    """``variants`` and ``controls``: registered variants, first-order control presets."""
    import variants as variant_registry

    variant_names = variant_registry.names()
    variants = _str_list(raw, "variants", problems, required=False) or []
    controls = _str_list(raw, "controls", problems, required=False) or []
    if "variants" not in raw and "controls" not in raw:
        problems.append("no runs: give `variants` and/or `controls`")
    for v in variants:
        if v not in variant_names:
            problems.append(
                f"unknown variant {v!r}{_close(v, variant_names)}; "
                f"valid variants: {', '.join(variant_names)}"
            )
    valid_controls = [p for p in PRESETS if control_algo(p) != "acktr"]
    for c in controls:
        if c not in PRESETS:
            problems.append(
                f"unknown control preset {c!r}{_close(c, list(PRESETS))}; "
                f"valid controls: {', '.join(valid_controls)}"
            )
        elif c not in valid_controls:
            problems.append(
                f"`controls`: preset {c!r} is not a first-order control (it trains with "
                f"optim.algo {control_algo(c)!r}); valid controls: {', '.join(valid_controls)}"
            )
    return variants, controls


def _envs(raw: dict, problems: list[str]) -> list[str] | None:
    from kfac_bench.rl.envs import EnvError, check_env_id

    envs = _str_list(raw, "envs", problems, required=True)
    for env in envs or []:
        try:
            check_env_id(env)
        except EnvError as error:
            problems.append(str(error).splitlines()[0])
    return envs


def _seeds(raw: dict, problems: list[str]) -> list[int]:
    raw_seeds = raw.get("seeds")
    if raw_seeds is None:
        problems.append("`seeds` is missing (a list of ints, or an int n meaning 0..n-1)")
    elif _is_int(raw_seeds):
        if raw_seeds < 1:
            problems.append(f"`seeds` = {raw_seeds}: an int n means seeds 0..n-1, so n >= 1")
        elif raw_seeds > MAX_RUNS:
            problems.append(
                f"`seeds` = {raw_seeds}: more than a sweep may hold (at most {MAX_RUNS:,} runs)"
            )
        else:
            return list(range(raw_seeds))
    elif isinstance(raw_seeds, list) and all(_is_int(s) and s >= 0 for s in raw_seeds):
        if raw_seeds:
            return _unique(raw_seeds, "`seeds`", problems)
        problems.append("`seeds` is empty; list at least one seed")
    else:
        problems.append(
            f"`seeds` must be a list of non-negative ints or an int n, got {raw_seeds!r}"
        )
    return []


def _preset(raw: dict, problems: list[str]) -> str | None:
    preset = raw.get("preset")
    if preset is None:
        return None
    if not isinstance(preset, str) or preset not in PRESETS:
        problems.append(
            f"unknown preset {preset!r}{_close(str(preset), list(PRESETS))}; "
            f"valid presets: {', '.join(PRESETS)}"
        )
        return None
    if control_algo(preset) != "acktr":
        problems.append(f"`preset` = {preset!r} is a first-order control; list it under `controls`")
        return None
    return preset


def _overrides_and_grid(raw: dict, problems: list[str]) -> tuple[dict, dict[str, list[Any]]]:
    """``[set]`` (key -> value) and ``[grid]`` (key -> distinct values), each value type-checked
    against its config field."""
    overrides: dict[str, Any] = {}
    raw_set = raw.get("set", {})
    if not isinstance(raw_set, dict):
        problems.append(f"[set] must be a table of dotted config keys, got {raw_set!r}")
        raw_set = {}
    flat_set = config_mod.flatten(raw_set)
    for key, value in flat_set.items():
        tp = _check_config_key("set", key, problems)
        if tp is not None and _check_value("set", key, value, tp, problems):
            overrides[key] = value

    grid: dict[str, list[Any]] = {}
    raw_grid = raw.get("grid", {})
    if not isinstance(raw_grid, dict):
        problems.append(f"[grid] must be a table of dotted config keys = lists, got {raw_grid!r}")
        raw_grid = {}
    for key, values in config_mod.flatten(raw_grid).items():
        tp = _check_config_key("grid", key, problems)
        if tp is None:
            continue
        if key in overrides or key in flat_set:
            problems.append(f"[grid] {key!r} is also in [set]; keep it in one of them")
        elif not isinstance(values, list):
            problems.append(f"[grid] {key!r} must be a list of values, got {values!r}")
        elif not values:
            problems.append(f"[grid] {key!r} is an empty axis; list at least one value")
        else:
            ok = all([_check_value("grid", key, v, tp, problems) for v in values])
            unique = _unique(values, f"[grid] {key!r}", problems)
            if ok:
                grid[key] = unique
    return overrides, grid


# ---------------------------------------------------------------------------------------------
# load


def read_toml(path: Path) -> dict[str, Any]:
    """Parse the file; a missing file is FileNotFoundError, bad TOML a SpecError (line, col)."""
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec not found: {path}")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise SpecError(path, [f"invalid TOML: {error}"]) from None
    except UnicodeDecodeError as error:
        raise SpecError(path, [f"invalid TOML: not UTF-8 ({error.reason})"]) from None


def spec_hash(raw: dict[str, Any]) -> str:
    """sha256 (16 hex digits) of the parsed spec: comments and layout do not change it."""
    text = json.dumps(raw, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec. Raises SpecError listing every problem found."""
    path = Path(path)
    return parse_spec(read_toml(path), path)


def parse_spec(raw: dict[str, Any], path: Path) -> SweepSpec:
    """Check every section of a parsed spec; SpecError with one line per problem."""
    problems: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            problems.append(
                f"unknown key {key!r}{_close(key, TOP_LEVEL_KEYS)}; "
                f"valid keys: {', '.join(TOP_LEVEL_KEYS)}"
            )
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(
            f"`name` must be a directory name (letters, digits, '.', '_', '-'), got {name!r}"
        )
    variants, controls = _labels(raw, problems)
    envs = _envs(raw, problems)
    seeds = _seeds(raw, problems)
    preset = _preset(raw, problems)
    steps = raw.get("steps")
    if steps is not None and (not _is_int(steps) or steps <= 0):
        problems.append(f"`steps` must be a positive integer, got {steps!r}")
        steps = None
    fidelity = raw.get("fidelity", False)
    if not isinstance(fidelity, bool):
        problems.append(f"`fidelity` must be true or false, got {fidelity!r}")
        fidelity = False
    steps_per_env = _env_table(raw, "steps_per_env", envs, problems, kind="steps")
    thresholds = _env_table(raw, "thresholds", envs, problems, kind="threshold")
    overrides, grid = _overrides_and_grid(raw, problems)
    if problems:
        raise SpecError(path, problems)
    return SweepSpec(
        path=path,
        name=str(name),
        raw=raw,
        spec_hash=spec_hash(raw),
        variants=variants,
        controls=controls,
        envs=envs or [],
        seeds=seeds,
        preset=preset,
        steps=steps,
        steps_per_env=steps_per_env,
        overrides=overrides,
        grid=grid,
        thresholds=thresholds,
        fidelity=fidelity,
    )
