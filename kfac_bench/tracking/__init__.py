"""Optional experiment tracking beside the CSVs: TensorBoard event files and Weights & Biases.

The CSVs stay the record (DESIGN.md §5); a tracker receives exactly the rows the trainer writes to
``episodes.csv`` and ``updates.csv``, at the same env step, under namespaced tags
(:data:`UPDATE_TAGS`, :data:`EPISODE_TAGS`; CleanRL's ``charts/`` and ``losses/`` scheme):

    updates.csv column            tag
    policy_loss, value_loss, ...  losses/<column>
    kl, predicted_kl, nu, ...     kfac/<column>
    fps, lr, update, wall_time    charts/<...>
    diag/<layer>/<stat>           diag/<layer>/<stat> (unchanged)
    episodes.csv return, length   charts/episodic_return, charts/episodic_length

The x axis is the env step (the CSV's ``step`` column). Empty cells (a metric the rule does not
produce, e.g. ``nu`` for A2C) are not logged.

Resume (a run killed and restarted from ``checkpoint.pt``; the CSVs are cut back to the
checkpoint's step by ``store.begin``): :mod:`.tensorboard_log` cuts the event files back to the
same step and opens a fresh file with ``purge_step`` for a TensorBoard that is already watching;
:mod:`.wandb_log` only sends rows once a checkpoint covers them, so W&B never holds a row the
CSVs lost. Either way no step is duplicated.

``log.tensorboard`` needs the ``tensorboard`` package (the ``tracking`` extra, installed by
``make install``); ``log.wandb`` needs ``wandb`` (never a dependency). :func:`~kfac_bench.tracking_availability.check_backends`
turns a missing package into one :class:`ConfigError` line before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfac_bench import timing
from kfac_bench.tracking_availability import check_backends

if TYPE_CHECKING:
    from kfac_bench.config import RunConfig

#: updates.csv column -> tag (every column but ``step``; diag/ columns keep their name).
UPDATE_TAGS: dict[str, str] = {
    "wall_time": "charts/wall_time",
    "update": "charts/updates",
    "fps": "charts/fps",
    "lr": "charts/learning_rate",
    "policy_loss": "losses/policy_loss",
    "value_loss": "losses/value_loss",
    "entropy": "losses/entropy",
    "grad_norm": "losses/grad_norm",
    "clip_fraction": "losses/clip_fraction",
    "kl": "kfac/kl",
    "predicted_kl": "kfac/predicted_kl",
    "predicted_kl_total": "kfac/predicted_kl_total",
    "nu": "kfac/nu",
    "trust_q": "kfac/trust_q",
    "inverse_staleness": "kfac/inverse_staleness",
    "stats_staleness": "kfac/stats_staleness",
    **{column: f"time/{column.removeprefix('time_')}" for column in timing.COLUMNS},
}
#: episodes.csv column -> tag (``wall_time`` is the event's own wall time, not a scalar).
EPISODE_TAGS: dict[str, str] = {
    "return": "charts/episodic_return",
    "length": "charts/episodic_length",
}
CONFIG_TAG = "config"  # the text summary holding the run's config table


def update_tag(column: str) -> str:
    """The tag of an updates.csv column (``diag/...`` columns are already namespaced)."""
    if column.startswith("diag/"):
        return column
    try:
        return UPDATE_TAGS[column]
    except KeyError:
        raise KeyError(f"updates.csv column {column!r} has no tracking tag (UPDATE_TAGS)") from None


def scalars(row: dict[str, Any], tags: dict[str, str] | None) -> dict[str, float]:
    """``{tag: value}`` for the numeric, non-empty cells of one CSV row (``step`` excluded).

    ``tags`` None: an updates.csv row (:data:`UPDATE_TAGS` and the ``diag/`` columns; a key the
    CSV has no column for is not logged either, as ``store.CsvLog`` drops it)."""
    out: dict[str, float] = {}
    for column, value in row.items():
        if column == "step" or value is None or isinstance(value, (str, bool)):
            continue
        if tags is None:
            tag = UPDATE_TAGS.get(column) or (column if column.startswith("diag/") else None)
        else:
            tag = tags.get(column)
        if tag is not None:
            out[tag] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# the trainer's view: one object, whatever is enabled


def config_table(record: dict[str, Any]) -> dict[str, Any]:
    """Flat ``{key: value}`` of a run: label, variant, env, seed, preset, the sweep axes, then
    every dotted config key (values as in config.json)."""
    from kfac_bench.config import flatten

    head = {k: record.get(k) for k in ("label", "variant", "env", "seed", "preset")}
    axes = {f"axis.{k}": v for k, v in (record.get("axes") or {}).items()}
    return {**head, **axes, **flatten(record.get("config") or {})}


class Tracker:
    """Sends the trainer's CSV rows to the enabled backends.

    ``resume_step``: the checkpoint's env step when the run resumes, None for a fresh start."""

    def __init__(self, config: RunConfig, run_dir: Path, resume_step: int | None) -> None:
        from kfac_bench import store

        self.backends: list[Any] = []
        log = config.log
        if not (log.tensorboard or log.wandb != "off"):
            return
        check_backends(log.tensorboard, log.wandb)
        record = store.read_config_record(run_dir)
        table = config_table(record)
        if log.tensorboard:
            from kfac_bench.tracking.tensorboard_log import TensorBoardLog

            self.backends.append(TensorBoardLog(run_dir, resume_step, table))
        if log.wandb != "off":
            from kfac_bench.tracking.wandb_log import WandbLog

            self.backends.append(WandbLog(run_dir, log.wandb, config.label, record, table))

    def episodes(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rows as written to episodes.csv (step, wall_time, return, length)."""
        for row in rows:
            values = scalars(row, EPISODE_TAGS)
            for backend in self.backends:
                backend.log(int(row["step"]), values)

    def update(self, row: dict[str, Any]) -> None:
        """One row as written to updates.csv."""
        values = scalars(row, None)
        for backend in self.backends:
            backend.log(int(row["step"]), values)

    def checkpoint(self, step: int) -> None:
        """``checkpoint.pt`` now covers every row up to ``step``."""
        for backend in self.backends:
            backend.checkpoint(step)

    def close(self, final: bool) -> None:
        """``final``: the run ended (done or diverged), so every row logged is kept."""
        for backend in self.backends:
            backend.close(final)
