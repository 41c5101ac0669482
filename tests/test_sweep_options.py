"""``SweepOptions``: the sweep's flags as a frozen dataclass, each value checked on construction.

Each domain is probed on both sides of its boundary (and with NaN and infinity, which a float
flag accepts from argparse), and the CLI's parsed flags are checked to arrive unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from kfac_bench import sweep
from kfac_bench.sweep import SweepOptions


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    return parser.parse_args(["spec.toml", *argv])


@pytest.mark.parametrize(
    ("field", "good", "bad", "message"),
    [
        ("workers", [1, 64], [0, -3], "--workers must be at least 1, got {}"),
        ("cpus_per_run", [1e-3, 0.5, 8.0], [0.0, -1.0, math.nan, math.inf], "--cpus-per-run must be a number > 0, got {}"),
        ("gpus_per_run", [0.0, 0.25, 2.0], [-1.0, -1e-9, math.nan, math.inf], "--gpus-per-run must be a number >= 0, got {}"),
        ("backend", ["local", "ray"], ["slurm", ""], "--backend must be one of local, ray, got {!r}"),
    ],
)  # fmt: skip
def test_each_option_is_checked_at_its_boundary(field, good, bad, message):
    for value in good:
        assert getattr(SweepOptions(**{field: value}), field) == value
    for value in bad:
        with pytest.raises(ValueError) as info:
            SweepOptions(**{field: value})
        assert str(info.value) == message.format(value)


def test_options_are_frozen_and_default_to_a_local_sweep():
    options = SweepOptions()
    assert (options.backend, options.workers, options.cpus_per_run, options.gpus_per_run) == (
        "local",
        None,
        None,
        0.0,
    )
    assert (options.retry_failed, options.progress, options.ray_address) == (False, True, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.workers = 2  # type: ignore[misc]


def test_flags_become_options():
    options = sweep.options_from(
        parse(
            "--backend", "ray", "--workers", "3", "--ray-address", "head:6379",
            "--cpus-per-run", "2", "--gpus-per-run", "0.25", "--retry-failed", "--no-progress",
        )
    )  # fmt: skip
    assert options == SweepOptions(
        backend="ray",
        workers=3,
        ray_address="head:6379",
        cpus_per_run=2.0,
        gpus_per_run=0.25,
        retry_failed=True,
        progress=False,
    )
    assert sweep.options_from(parse()) == SweepOptions()
