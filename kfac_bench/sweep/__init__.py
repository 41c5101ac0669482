"""``kfac-bench sweep``: variant × env × seed (× any config axis), resumable, local or on Ray.

The package is layered; each module imports only from the modules above it in this list (and
from outside the package), never from one below it (``tests/test_structure.py`` checks it):

1. :mod:`~kfac_bench.sweep.spec` — the spec file: read ``runs/<name>.toml``, check every field,
   report every problem (:class:`SpecError`), give a frozen :class:`SweepSpec`.
2. :mod:`~kfac_bench.sweep.plan` — the runs it describes (:func:`plan_runs`: one resolved
   config per run) and what to do with each, read from its directory through
   :mod:`kfac_bench.store` (:func:`inspect_run` -> :class:`Entry`).
3. :mod:`~kfac_bench.sweep.worker` — one run inside a worker: lock, ``train.log``, train,
   fidelity; progress messages out, one result back.
4. :mod:`~kfac_bench.sweep.backends` — where workers run: spawned processes
   (:class:`LocalBackend`) or Ray tasks (:class:`RayBackend`), as a stream of events.
5. :mod:`~kfac_bench.sweep.scheduler` — the parent's loop (:class:`Sweep`): queue, locks,
   ``sweep.json``, failures, Ctrl-C; configured by a frozen, validated :class:`SweepOptions`.
6. :mod:`~kfac_bench.sweep.display` — the dry-run table, the progress bar, the summary.
7. :mod:`~kfac_bench.sweep.cli` — flags -> :class:`SweepOptions`; wires the layers together and
   owns the exit status.

Data flows down the list once: spec -> planned runs -> entries -> tasks -> events -> entries ->
``sweep.json`` and the summary. Usage, the run-directory layout and the lifecycle are in
:mod:`kfac_bench.sweep.cli`; the spec format in :mod:`kfac_bench.sweep.spec`.
"""

from kfac_bench.sweep.backends import LocalBackend, RayBackend, available_cores
from kfac_bench.sweep.cli import add_arguments, exit_status, options_from, run
from kfac_bench.sweep.display import Display, print_plan, print_summary
from kfac_bench.sweep.plan import (
    FIDELITY_MISSING,
    Entry,
    PlannedRun,
    inspect_run,
    plan_fidelity,
    plan_runs,
    planned_steps,
)
from kfac_bench.sweep.scheduler import Progress, Sweep, SweepOptions
from kfac_bench.sweep.spec import MAX_RUNS, SpecError, SweepSpec, load_spec, parse_spec
from kfac_bench.sweep.worker import Task, execute, run_fidelity

__all__ = [
    "FIDELITY_MISSING",
    "MAX_RUNS",
    "Display",
    "Entry",
    "LocalBackend",
    "PlannedRun",
    "Progress",
    "RayBackend",
    "SpecError",
    "Sweep",
    "SweepOptions",
    "SweepSpec",
    "Task",
    "add_arguments",
    "available_cores",
    "execute",
    "exit_status",
    "inspect_run",
    "load_spec",
    "options_from",
    "parse_spec",
    "plan_fidelity",
    "plan_runs",
    "planned_steps",
    "print_plan",
    "print_summary",
    "run",
    "run_fidelity",
]
