"""The table from CRI method names to pycri's implementations, bound to one RuntimeContext.

Methods missing here answer UNIMPLEMENTED at the gRPC seam with a message naming them.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from pycri.service import status, version
from pycri.service.context import RuntimeContext

Impl = Callable[[RuntimeContext, Any], Awaitable[Message]]

RUNTIME_RPCS: dict[str, Impl] = {
    "Version": version.version,
    "Status": status.status,
}

IMAGE_RPCS: dict[str, Impl] = {}


def bind(rt: RuntimeContext, table: dict[str, Impl]) -> dict[str, Callable[[Any], Any]]:
    return {name: functools.partial(impl, rt) for name, impl in table.items()}
