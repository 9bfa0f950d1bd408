"""The events the dispatcher carries: task exits (from exit monitors) and OOMs (from the
containerd event stream)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    SANDBOX = "sandbox"
    CONTAINER = "container"


@dataclass(frozen=True, kw_only=True)
class TaskExit:
    kind: Kind
    object_id: str
    pid: int
    exit_status: int
    exited_at: int  # ns since the epoch, from containerd's Wait result
    reason: str = ""  # set only when pycri, not the process, decided the outcome


@dataclass(frozen=True, kw_only=True)
class TaskOOM:
    container_id: str


Event = TaskExit | TaskOOM
