"""IDs and clocks for CRI objects."""

from __future__ import annotations

import secrets
import time


def new_id() -> str:
    """64 hex characters from 32 random bytes, like containerd's CRI plugin."""
    return secrets.token_hex(32)


def now_ns() -> int:
    return time.time_ns()
