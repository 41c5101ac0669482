"""Fixtures and machine information for the benchmark suite (``make bench``; ``make test`` runs
every body once with ``--benchmark-disable``).

The device comes from ``KFAC_BENCH_DEVICE`` (``cpu`` unless ``python -m kfac_bench.bench_report
run --device cuda`` sets it); CUDA-only benchmarks skip on CPU. The JSON's ``machine_info`` gets
the torch build, BLAS, threads, CPU model, GPU name and the load average (:func:`environment`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import benchlib` under any import mode

from benchlib import DEVICE_ENV, bench_device

from kfac_bench.bench_report import environment


@pytest.fixture(scope="session")
def device() -> torch.device:
    dev = bench_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{DEVICE_ENV}=cuda but torch.cuda.is_available() is False")
    return dev


@pytest.fixture
def quick(benchmark) -> bool:
    """True under --benchmark-disable: use the small shapes."""
    return bool(benchmark.disabled)


@pytest.fixture(autouse=True)
def _float32_default():
    """Benchmarks measure the float32 defaults, whatever other test modules set globally
    (tests/test_curvature.py switches torch's default dtype to float64 at import)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The trainer sets torch threads from its config (MinAtar: 1); keep the suite's own."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["kfac_bench"] = environment(str(bench_device()))
    machine_info["kfac_bench"]["loadavg_end"] = list(os.getloadavg())
