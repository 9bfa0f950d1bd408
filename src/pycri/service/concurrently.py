"""Run independent steps of one RPC at once, and settle them all before going on.

``asyncio.gather`` raises the first failure at once while the other steps keep running; a
rollback that starts then could race a step still in flight (delete a directory that a
concurrent checkpoint write is about to fill). ``all_settled`` waits for every step, then
raises the first failure (in argument order), so whatever follows — the caller's next step
or its undo journal — sees the steps finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def all_settled(*steps: Awaitable[Any]) -> list[Any]:
    """The steps' results, once all have ended; the first failure raised after that."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
