"""Shared fixtures: a fake clock, config files on disk, and parsed /metrics."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

# The helpers every kind of test shares live in harness.py; these names are re-exported
# for the unit tests.
from harness import make_key, sample
from harness import parse_metrics as metric_values

DATA = Path(__file__).parent / "data"
__all__ = ["DATA", "FakeClock", "make_key", "metric_values", "sample"]


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    __call__ = time  # also usable where a plain time() callable is expected

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a (dedented) YAML text to a file and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
