"""Process-wide settings the trainer relies on for speed: glibc keeping freed memory
(kfac_bench/allocator.py) and libgomp's spin count (kfac_bench/__init__.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

FAULTS = """
import resource, sys, torch
from kfac_bench import allocator
from kfac_bench.presets import build_config
from kfac_bench.rl.policies import build_policy
from kfac_bench.rl.update_rules import Batch, build_update_rule
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
overrides = {"kfac.cold_iters": 0, "kfac.inverse_every": 1000}
config = build_config("BreakoutNoFrameskip-v4", overrides=overrides)
torch.manual_seed(0)
rule = build_update_rule(build_policy((4, 84, 84), 4, config.policy), config)
g = torch.Generator().manual_seed(0)
n = 320
batch = Batch(
    obs=torch.randint(0, 255, (n, 4, 84, 84), dtype=torch.uint8, generator=g),
    actions=torch.randint(0, 4, (n,), generator=g),
    advantages=torch.randn(n, generator=g),
    returns=torch.randn(n, generator=g),
    values=torch.randn(n, generator=g),
)
for _ in range(2):
    rule.update(batch, 0, False)
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rule.update(batch, 0, False)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[2])  # the median update: one update's heap growth is not the steady state
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_kept_memory_is_not_faulted_in_again():
    """Minor page faults of the median of five Nature-CNN ACKTR updates at B = 320 (its conv
    activations and their gradients are 16 MB): glibc's defaults unmap and re-fault them every
    update (14 000–48 000 faults on the 2-vCPU AMD VM); with keep_freed_memory they are reused
    (0–17 per update there, from the second update on; before M_MMAP_MAX = 0, 9 612 in some
    updates, allocator.py)."""
    default, kept = _faults("default"), _faults("keep")
    assert kept < 0.1 * default, (default, kept)


def test_importing_kfac_bench_sets_the_spin_count_unless_given():
    code = "import kfac_bench, os; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "10000"
    env["GOMP_SPINCOUNT"] = "77"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.stdout.strip() == "77"
