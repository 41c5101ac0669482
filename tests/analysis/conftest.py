"""Fixtures for the analysis tests; the synthetic sweep builder is in analysis_synthetic.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from analysis_synthetic import build_sweep


@pytest.fixture
def make_sweep(tmp_path: Path) -> Callable[..., Path]:
    """``make_sweep(name="sweep", **kwargs)`` builds a synthetic sweep under ``tmp_path``."""

    def _make(name: str = "sweep", **kwargs: Any) -> Path:
        return build_sweep(tmp_path / name, **kwargs)

    return _make
