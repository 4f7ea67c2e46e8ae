"""Shared fixtures: a fake clock, config files on disk, and parsed /metrics."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

DATA = Path(__file__).parent / "data"


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

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


def make_key() -> str:
    """A fake API key built at run time (never a real-looking literal)."""
    return "exec_test_" + "k" * 12


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into {(sample name, sorted labels): value}."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def sample(values: dict, metric: str, /, **labels: str) -> float | None:
    """One sample's value from :func:`metric_values` output, or None."""
    return values.get((metric, tuple(sorted(labels.items()))))
