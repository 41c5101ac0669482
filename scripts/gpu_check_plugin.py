"""A pytest plugin for ``scripts/gpu_check.py``: records each benchmark's outcome, its
``extra_info`` and (when timing is on) its median, into the JSON file named by
``$GPU_CHECK_CAPTURE``. Works with ``--benchmark-disable`` too (the suite fills ``extra_info``
either way), which pytest-benchmark's own ``--benchmark-json`` does not.

    KFAC_BENCH_DEVICE=cuda GPU_CHECK_CAPTURE=out.json PYTHONPATH=scripts \
        python -m pytest tests/benchmarks/test_bench_update.py -k nature -p gpu_check_plugin
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

CAPTURE_ENV = "GPU_CHECK_CAPTURE"
_results: dict[str, dict[str, Any]] = {}


def _entry(nodeid: str) -> dict[str, Any]:
    return _results.setdefault(nodeid, {"nodeid": nodeid, "outcome": "not run"})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    bench = getattr(item, "funcargs", {}).get("benchmark")
    if bench is None:
        return
    entry = _entry(item.nodeid)
    entry["extra_info"] = json.loads(json.dumps(dict(bench.extra_info), default=str))
    stats = getattr(getattr(bench, "stats", None), "stats", None)
    if stats is not None and getattr(stats, "rounds", 0):
        entry["median_s"] = float(stats.median)
        entry["min_s"] = float(stats.min)
        entry["rounds"] = int(stats.rounds)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        entry = _entry(report.nodeid)
        if report.when == "call" or entry["outcome"] in ("not run", "passed"):
            entry["outcome"] = report.outcome
            entry["duration_s"] = round(float(report.duration), 3)
        if report.outcome == "failed":
            entry["error"] = str(report.longrepr).strip().splitlines()[-1][:300]
        elif report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            entry["error"] = str(report.longrepr[-1])[:300]


def pytest_sessionfinish(session):
    path = os.environ.get(CAPTURE_ENV)
    if path:
        with open(path, "w") as handle:
            json.dump(list(_results.values()), handle, indent=1)
