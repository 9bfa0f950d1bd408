"""Fault injection for tests: labels that make exit handling of one object slow or failing.

Only with ``--enable-fault-injection`` (never on a real node). A sandbox or container
labelled ``pycri.faults/...`` gets, in its exit handling:

- ``delete-delay-seconds: N`` — its task delete is *stuck* for a window of N s from the first
  attempt: every attempt inside the window hangs until the window closes (or the handling
  timeout cuts it off and a retry comes back later), as a shim that does not answer would;
- ``delete-fail-times: N`` — its first N task deletes fail;
- ``persist-fail-times: N`` — its first N status writes of the exit fail;
- ``rollback-fail-times: N`` — when its create fails, the first N undo steps of the
  rollback fail (as they would with containerd down), leaving the half-made object to the
  undo journal (``service/undo.py``).

The counts and windows are in memory: a restart of pycri resets them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

FAULT_DELETE_DELAY = "pycri.faults/delete-delay-seconds"
FAULT_DELETE_FAIL = "pycri.faults/delete-fail-times"
FAULT_PERSIST_FAIL = "pycri.faults/persist-fail-times"
FAULT_ROLLBACK_FAIL = "pycri.faults/rollback-fail-times"


class InjectedFault(RuntimeError):
    """A failure made on purpose by a pycri.faults/* label."""


class Faults:
    """Counts injected failures per object."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._used: dict[tuple[str, str], int] = {}
        self._opened: dict[tuple[str, str], float] = {}

    def _value(self, labels: Mapping[str, str], key: str) -> float:
        if not self.enabled:
            return 0
        try:
            return float(labels.get(key, "0"))
        except ValueError:
            return 0

    def remaining_delay(self, object_id: str, labels: Mapping[str, str], key: str) -> float:
        """Seconds left of a stuck window that opened at the first call for this object."""
        total = self._value(labels, key)
        if total <= 0:
            return 0
        opened = self._opened.setdefault((object_id, key), time.monotonic())
        return max(0.0, opened + total - time.monotonic())

    def should_fail(self, object_id: str, labels: Mapping[str, str], key: str) -> bool:
        times = int(self._value(labels, key))
        used = self._used.get((object_id, key), 0)
        if used < times:
            self._used[(object_id, key)] = used + 1
            return True
        return False

    def forget(self, object_id: str) -> None:
        for k in [k for k in self._used if k[0] == object_id]:
            del self._used[k]
        for k in [k for k in self._opened if k[0] == object_id]:
            del self._opened[k]
