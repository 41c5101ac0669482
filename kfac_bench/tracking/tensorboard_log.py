"""TensorBoard event files in the run directory (``log.tensorboard = true``).

Files: ``<run_dir>/events.out.tfevents.<time>.<host>.<pid>.<n>``, one per session (start or
resume) of the run, written by ``torch.utils.tensorboard.SummaryWriter``, so
``tensorboard --logdir runs/<sweep>`` shows one TensorBoard run per run directory. Scalars are
float32 ``simple_value`` summaries with the env step as the step; the config goes in as a text
table (tag ``config``) and as HParams (``torch.utils.tensorboard.summary.hparams``, written into
the same file rather than through ``add_hparams``, which would open a child run per call).

Resume at checkpoint step S (the CSVs keep rows with step <= S): every earlier event file is
rewritten atomically without its events of step > S (record framing: TFRecord, as
``tensorboard.summary.writer.record_writer.RecordWriter`` writes it; a torn last record, from a
kill, is dropped by ``RawEventFileLoader``), and the new writer gets ``purge_step = S + 1``: its
first event, a ``SessionLog.START`` at S + 1, makes a TensorBoard that loaded the old events
before the cut discard every event at step >= S + 1 it has seen (TensorBoard's
``EventAccumulator._CheckForRestartAndMaybePurge``). A fresh start deletes earlier event files,
as ``store.begin`` deletes the CSVs.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from kfac_bench.tracking import CONFIG_TAG

EVENTS_GLOB = "events.out.tfevents.*"
FLUSH_SECS = 5  # a live sweep shows new points within seconds


def event_files(run_dir: Path) -> list[Path]:
    """The run's event files, oldest session first (TensorBoard reads them in name order)."""
    return sorted(p for p in Path(run_dir).glob(EVENTS_GLOB) if p.is_file())


def wait_for_a_later_name(paths: list[Path]) -> None:
    """TensorBoard reads a run's files in name order, and a writer names its file
    ``events.out.tfevents.<10-digit unix second>.<host>.<pid>.<n>``: a session that starts in
    the same second as the previous one could sort before it (a lower pid). Wait (< 1 s) until
    the clock is past every existing file's second."""
    seconds = [int(p.name.split(".")[3]) for p in paths if p.name.split(".")[3].isdigit()]
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)


def cut_events(path: Path, max_step: int) -> set[str]:
    """Rewrite ``path`` without events of step > ``max_step``; returns the tags it keeps."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    from kfac_bench.store import write_atomic

    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    tags: set[str] = set()
    changed = False
    for record in RawEventFileLoader(str(path)).Load():
        event = event_pb2.Event.FromString(record)
        if event.step > max_step:
            changed = True
            continue
        writer.write(record)
        tags.update(value.tag for value in event.summary.value)
    data = buffer.getvalue()
    if changed or data != path.read_bytes():  # a torn tail is dropped too
        write_atomic(path, data)
    return tags


def hparam_value(value: Any) -> Any:
    """HParams take bool, int, float and str; anything else (null, lists) as its JSON text."""
    import json

    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


class TensorBoardLog:
    """One session's writer. ``resume_step``: the checkpoint's env step, None for a fresh run."""

    def __init__(self, run_dir: Path, resume_step: int | None, table: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        kept: set[str] = set()
        for path in event_files(run_dir):
            if resume_step is None:
                path.unlink()
            else:
                kept |= cut_events(path, resume_step)
        wait_for_a_later_name(event_files(run_dir))
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge, flush_secs=FLUSH_SECS)
        if not any(tag.split("/")[0] == CONFIG_TAG for tag in kept):  # config/text_summary
            self._write_config(table)

    def _write_config(self, table: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        lines = ["| key | value |", "|---|---|"]
        lines += [f"| {key} | `{value}` |" for key, value in table.items()]
        self.writer.add_text(CONFIG_TAG, "\n".join(lines), global_step=0)
        params = {key: hparam_value(value) for key, value in table.items()}
        # The HParams dashboard lists each run with its last episodic return.
        for summary in hparams(params, {"charts/episodic_return": float("nan")}):
            self.writer.file_writer.add_summary(summary)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def checkpoint(self, step: int) -> None:
        self.writer.flush()

    def close(self, final: bool) -> None:
        self.writer.close()
