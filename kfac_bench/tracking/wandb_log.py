"""Weights & Biases (``log.wandb = "offline" | "online"``), through the ``wandb`` package.

One W&B run per run directory: project ``$WANDB_PROJECT`` (default ``kfac-bench``), group = the
sweep (the run directory's parent name), name = the run directory's name (label, env, seed,
axes), config = the same flat table TensorBoard gets, id = a hash of the run directory's absolute
path, so a resumed session continues the same run (``resume="allow"``). Files go to
``<run_dir>/wandb/`` (offline: ``wandb/offline-run-*``; upload with ``wandb sync``).

Rows are held back until a checkpoint covers them (:meth:`WandbLog.checkpoint`) and then sent, each
as one history row ``{"global_step": env_step, tag: value, ...}`` with ``global_step`` declared
the x axis of every metric (``define_metric``). A run killed after a checkpoint therefore never
sent the rows its CSVs lose on resume, and the resumed session's rows follow without a duplicate
step. The price: W&B shows a run up to its last checkpoint (``log.checkpoint_every`` updates),
TensorBoard up to the last few seconds. ``online`` needs an API key (checked before the run starts,
never an interactive prompt); ``offline`` needs none.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

STEP_KEY = "global_step"
DEFAULT_PROJECT = "kfac-bench"


def run_id(run_dir: Path) -> str:
    """A stable W&B run id for a run directory (W&B ids: letters, digits, ``-``, ``_``)."""
    return "kb-" + hashlib.sha1(str(Path(run_dir).absolute()).encode()).hexdigest()[:20]


class WandbInitError(ValueError):
    """wandb.init failed (bad key, no network for online, ...): one line for the CLI (exit 2)."""


class WandbLog:
    """One session of the run's W&B run; see the module docstring for what is sent when."""

    def __init__(
        self, run_dir: Path, mode: str, label: str, record: dict[str, Any], table: dict[str, Any]
    ) -> None:
        import wandb

        run_dir = Path(run_dir).absolute()
        settings = wandb.Settings(
            silent=True, console="off", disable_git=True, save_code=False, x_disable_stats=True
        )
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                group=run_dir.parent.name,
                name=run_dir.name,
                id=run_id(run_dir),
                resume="allow",
                config=table,
                dir=str(run_dir),
                mode=mode,
                tags=[label, str(record.get("env", ""))],
                settings=settings,
                reinit="finish_previous",
            )
        except Exception as error:  # wandb raises its own types; keep the user's one line
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise WandbInitError(f"log.wandb={mode}: wandb.init failed: {first}") from error
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)
        self.pending: list[tuple[int, dict[str, float]]] = []

    def log(self, step: int, values: dict[str, float]) -> None:
        if values:
            self.pending.append((step, values))

    def _send(self, upto: int | None) -> None:
        keep = []
        for step, values in self.pending:
            if upto is None or step <= upto:
                self.run.log({STEP_KEY: step, **values})
            else:
                keep.append((step, values))
        self.pending = keep

    def checkpoint(self, step: int) -> None:
        self._send(step)

    def close(self, final: bool) -> None:
        if final:
            self._send(None)
        self.pending.clear()
        self.run.finish(exit_code=0 if final else 1)
