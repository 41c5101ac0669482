"""Load a sweep directory into tidy tables (run directory contract: DESIGN.md §5).

``load_sweep(root)`` reads ``root/sweep.json`` (optional) and every run directory
``<label>__<env-slug>__s<seed>[__<axis>-<value>...]`` into three tidy tables:

* ``runs``: one row per run — ``run, label, variant, env, seed, preset, <axis columns>,
  state, ok, issue, steps, budget, wall_time, error, n_episodes, n_updates`` + provenance;
* ``episodes``: one row per finished episode — identity columns + ``step, wall_time, return,
  length``;
* ``updates``: one row per logged update — identity columns + every ``updates.csv`` column.

Nothing is dropped: a failed, diverged, unfinished or unreadable run keeps its row in ``runs``
with ``ok = False`` and a human-readable ``issue``; runs listed in ``sweep.json`` without a
directory get a row too. ``ok`` is True only when the run's ``config.json`` and ``status.json``
are readable (:func:`kfac_bench.store.read_config_record`, :func:`kfac_bench.store.read_status`),
the status says ``done`` and it has episodes; the statistics use the ``ok`` runs and the report
lists the others with the reason. Older ``updates.csv`` files lacking some of today's columns
(``kfac_bench.store.UPDATE_COLUMNS``) load with those columns absent (NaN in the tidy table).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kfac_bench import store
from kfac_bench.store import EPISODE_COLUMNS

RUN_FILES = ("config.json", "episodes.csv", "updates.csv", "status.json")
ID_COLUMNS = ("run", "label", "env", "seed")
_RUN_NAME = re.compile(r"^(?P<label>[^_].*?)__(?P<env>.+?)__s(?P<seed>\d+)(?P<rest>(__.+)?)$")


@dataclass(frozen=True, eq=False)
class Sweep:
    """A loaded sweep. ``axes`` are the extra sweep axes (dotted config keys), also columns."""

    root: Path
    name: str
    meta: dict[str, Any]
    axes: tuple[str, ...]
    runs: pd.DataFrame
    episodes: pd.DataFrame
    updates: pd.DataFrame
    fidelity: pd.DataFrame | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def id_columns(self) -> list[str]:
        """Columns identifying a run and its group: ``run, label, env, seed, *axes``."""
        return [*ID_COLUMNS, *self.axes]


def parse_run_name(name: str) -> dict[str, Any]:
    """Split ``<label>__<env-slug>__s<seed>[__<axis>-<value>...]`` into its parts.

    Returns ``{"label", "env", "seed", "axes": {axis: value}}``; an unparseable name gives
    ``label = name`` and empty fields (the run is still loaded, and flagged by its files).
    """
    match = _RUN_NAME.match(name)
    if not match:
        return {"label": name, "env": "", "seed": -1, "axes": {}}
    axes: dict[str, str] = {}
    for part in filter(None, match.group("rest").split("__")):
        key, _, value = part.partition("-")
        axes[key] = value
    return {
        "label": match.group("label"),
        "env": match.group("env"),
        "seed": int(match.group("seed")),
        "axes": axes,
    }


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(content, problem): problem is a short text when the file is missing or unreadable."""
    if not path.is_file():
        return None, f"{path.name} missing"
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return None, f"{path.name} unreadable ({type(error).__name__})"
    if not isinstance(content, dict):
        return None, f"{path.name} is not a JSON object"
    return content, None


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[pd.DataFrame | None, str | None]:
    """Read an append-only CSV leniently: numeric columns, sorted by ``step``.

    Rows with a NaN in a ``required`` column are dropped (a torn last line, from a kill during
    a write, reads as NaNs); a missing file or a missing required column is a problem.
    """
    if not path.is_file():
        return None, f"{path.name} missing"
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(required)), None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        return None, f"{path.name} unreadable ({type(error).__name__})"
    missing = [c for c in required if c not in frame.columns]
    if missing:
        return None, f"{path.name} lacks columns {', '.join(missing)}"
    frame = frame.apply(pd.to_numeric, errors="coerce")
    frame = frame.dropna(subset=list(required)).sort_values("step", kind="stable")
    return frame.reset_index(drop=True), None


def _axis_value(value: Any) -> str:
    """Axis values as strings (tables and figure facets need one comparable type)."""
    return json.dumps(value) if isinstance(value, (bool, type(None), list, dict)) else str(value)


def _first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0] if text and str(text).strip() else ""


def _unreadable(error: Exception, name: str) -> str:
    """``config.json unreadable: is not valid JSON (...)`` — the file and what is wrong."""
    if isinstance(error, store.RunDirError):
        return f"{error.path.name} unreadable: {error.problem}"
    if isinstance(error, OSError):
        return f"{name} unreadable: {(error.strerror or type(error).__name__).lower()}"
    return f"{name} unreadable: {error}"


def _read_record(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """``config.json`` through the store (the run-directory contract's reader)."""
    if not (run_dir / "config.json").exists():
        return {}, "config.json missing"
    try:
        return store.read_config_record(run_dir), None
    except (OSError, ValueError) as error:  # RunDirError is a ValueError
        return {}, _unreadable(error, "config.json")


def _read_run_status(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """``status.json`` through the store, as a plain dict (``wall_time`` dropped when 0)."""
    try:
        status = store.read_status(run_dir)
    except (OSError, ValueError) as error:
        return {}, _unreadable(error, "status.json")
    if status is None:
        return {}, "status.json missing"
    fields = status.to_dict()
    if not fields["wall_time"]:
        fields.pop("wall_time")
    return fields, None


def _load_run(run_dir: Path, listed: dict[str, Any] | None) -> dict[str, Any]:
    """Read one run directory into ``{"row": {...}, "episodes": df, "updates": df, ...}``."""
    parsed = parse_run_name(run_dir.name)
    problems: list[str] = []
    config, problem = _read_record(run_dir)
    if problem:
        problems.append(problem)
    status, problem = _read_run_status(run_dir)
    if problem:
        problems.append(problem)
    readable = len(problems) == 0
    episodes, problem = _read_csv(run_dir / "episodes.csv", ("step", "return"))
    if problem:
        problems.append(problem)
    updates, problem = _read_csv(run_dir / "updates.csv", ("step",))
    if problem:
        problems.append(problem)
    fidelity = None
    if (run_dir / "fidelity.csv").is_file():
        try:
            fidelity = pd.read_csv(run_dir / "fidelity.csv")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            problems.append("fidelity.csv unreadable")

    listed = listed or {}
    resolved = config.get("config") if isinstance(config.get("config"), dict) else {}
    provenance = config.get("provenance") if isinstance(config.get("provenance"), dict) else {}
    axes = config.get("axes") if isinstance(config.get("axes"), dict) else parsed["axes"]
    label = config.get("label") or listed.get("label") or parsed["label"]
    env = config.get("env") or listed.get("env") or resolved.get("env") or parsed["env"]
    seed = config.get("seed", listed.get("seed", parsed["seed"]))
    state = status.get("state") or ("unknown" if not listed.get("state") else listed["state"])
    budget = resolved.get("total_steps") or config.get("total_steps")
    n_episodes = 0 if episodes is None else len(episodes)
    steps = status.get("steps")
    if steps is None and episodes is not None and n_episodes:
        steps = float(episodes["step"].iloc[-1])
    if steps is None and updates is not None and len(updates):
        steps = float(updates["step"].iloc[-1])
    wall_time = status.get("wall_time")
    if wall_time is None and updates is not None and len(updates) and "wall_time" in updates:
        wall_time = float(updates["wall_time"].iloc[-1])
    if wall_time is None and episodes is not None and n_episodes and "wall_time" in episodes:
        wall_time = float(episodes["wall_time"].iloc[-1])
    error = _first_line(status.get("error") or listed.get("error"))

    if state == "failed":
        problems.insert(0, f"failed: {error or 'no error message'}")
    elif state == "diverged":
        problems.insert(0, f"diverged: {error or 'no message'}")
    elif state not in ("done",):
        done_of = f"{steps:.0f}" if steps is not None else "?"
        of_budget = f"/{budget:.0f}" if budget else ""
        problems.insert(0, f"unfinished (state {state}, {done_of}{of_budget} steps)")
    if state == "done" and n_episodes == 0:
        problems.append("no finished episodes")

    row: dict[str, Any] = {
        "run": run_dir.name,
        "label": str(label),
        "variant": str(config.get("variant") or resolved.get("variant") or label),
        "env": str(env),
        "seed": int(seed) if seed is not None else -1,
        "preset": str(config.get("preset", "")),
        **{f"axis:{k}": _axis_value(v) for k, v in axes.items()},
        "state": str(state),
        "ok": readable and state == "done" and n_episodes > 0,
        "issue": "; ".join(problems),
        "steps": float(steps) if steps is not None else np.nan,
        "budget": float(budget) if budget else np.nan,
        "wall_time": float(wall_time) if wall_time is not None else np.nan,
        "error": error,
        "n_episodes": n_episodes,
        "n_updates": 0 if updates is None else len(updates),
        "git_commit": str(provenance.get("git_commit", "")),
        "git_dirty": provenance.get("git_dirty"),
        "host": str(provenance.get("host", "")),
        "device": str(provenance.get("device", "")),
        "started": str(provenance.get("started", "")),
        "versions": provenance.get("versions") or {},
    }
    return {"row": row, "episodes": episodes, "updates": updates, "fidelity": fidelity}


def _is_run_dir(path: Path) -> bool:
    if not path.is_dir() or path.name.startswith((".", "_")) or path.name == "report":
        return False
    return bool(_RUN_NAME.match(path.name)) or any((path / f).exists() for f in RUN_FILES)


def _with_ids(frame: pd.DataFrame | None, row: dict[str, Any], id_cols: list[str]) -> pd.DataFrame:
    if frame is None or frame.empty:
        return pd.DataFrame()
    ids = pd.DataFrame({c: [row.get(c)] * len(frame) for c in id_cols})
    return pd.concat([ids, frame.reset_index(drop=True)], axis=1)


def load_sweep(root: str | Path) -> Sweep:
    """Load every run of a sweep directory (see module docstring for the tables).

    Raises FileNotFoundError when ``root`` does not exist and ValueError when it holds no runs.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs directory not found: {root}")
    meta, problem = _read_json(root / "sweep.json")
    if meta is None and problem and "missing" not in problem:
        raise ValueError(f"{root / 'sweep.json'}: {problem}")
    meta = meta or {}
    listed = {
        str(r["name"]): r
        for r in meta.get("runs", [])
        if isinstance(r, dict) and r.get("name") is not None
    }
    run_dirs = sorted(p for p in root.iterdir() if _is_run_dir(p))
    if not run_dirs and not listed:
        raise ValueError(
            f"no runs in {root} (expected <label>__<env>__s<seed> run directories or sweep.json)"
        )

    loaded = [_load_run(d, listed.get(d.name)) for d in run_dirs]
    present = {d.name for d in run_dirs}
    for name, entry in listed.items():
        if name in present:
            continue
        parsed = parse_run_name(name)
        state = str(entry.get("state") or "missing")
        row = {
            "run": name,
            "label": str(entry.get("label", parsed["label"])),
            "variant": str(entry.get("variant", entry.get("label", parsed["label"]))),
            "env": str(entry.get("env", parsed["env"])),
            "seed": int(entry.get("seed", parsed["seed"])),
            "preset": str(entry.get("preset", "")),
            **{f"axis:{k}": _axis_value(v) for k, v in parsed["axes"].items()},
            "state": state,
            "ok": False,
            "issue": f"no run directory (sweep.json state {state})",
            "error": _first_line(entry.get("error")),
            "n_episodes": 0,
            "n_updates": 0,
            "versions": {},
        }
        loaded.append({"row": row, "episodes": None, "updates": None, "fidelity": None})

    axes = tuple(sorted({k[5:] for i in loaded for k in i["row"] if k.startswith("axis:")}))
    for item in loaded:
        for axis in axes:
            item["row"][axis] = item["row"].pop(f"axis:{axis}", "(unset)")
    runs = pd.DataFrame([item["row"] for item in loaded])
    head = ["run", "label", "variant", "env", "seed", "preset", *axes]
    runs = runs[[*head, *(c for c in runs.columns if c not in head)]]
    runs = runs.sort_values(["env", "label", *axes, "seed", "run"], kind="stable")
    runs = runs.reset_index(drop=True)

    id_cols = [*ID_COLUMNS, *axes]
    episodes = [_with_ids(i["episodes"], i["row"], id_cols) for i in loaded]
    updates = [_with_ids(i["updates"], i["row"], id_cols) for i in loaded]
    fidelity = [
        _with_ids(i["fidelity"], {"run": i["row"]["run"]}, ["run"])
        for i in loaded
        if i["fidelity"] is not None
    ]
    if (root / "fidelity.csv").is_file():
        try:
            fidelity.append(pd.read_csv(root / "fidelity.csv"))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            pass
    episode_table = _concat(episodes, [*id_cols, *EPISODE_COLUMNS])
    update_table = _concat(updates, [*id_cols, "step", "wall_time"])
    fidelity_table = pd.concat(fidelity, ignore_index=True) if fidelity else None

    thresholds: dict[str, float] = {}
    for source in (meta.get("spec", {}) or {}, meta):
        for env, value in (source.get("thresholds") or {}).items():
            if value is not None:
                thresholds[str(env)] = float(value)

    return Sweep(
        root=root,
        name=str(meta.get("name") or root.name),
        meta=meta,
        axes=axes,
        runs=runs,
        episodes=episode_table,
        updates=update_table,
        fidelity=fidelity_table,
        thresholds=thresholds,
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)
