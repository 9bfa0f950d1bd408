"""Fixtures shared by the unit tests (fakes themselves live in ``tests/unit/fakes.py``)."""

from __future__ import annotations

import pytest

from tests.unit.fakes import FakeClock, FakeTasks


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tasks() -> FakeTasks:
    return FakeTasks()
