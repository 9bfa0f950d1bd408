"""A dictionary of objects by 64-hex ID that also resolves unique ID prefixes.

crictl and operators type short IDs; kubelet sends full ones. An exact match is a dict hit;
a prefix is resolved by a scan (stores hold hundreds of objects, not millions). An empty or
ambiguous prefix is an INVALID_ARGUMENT, not a NOT_FOUND, so a caller never mistakes "you
were unclear" for "it is gone".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from pycri.errors import InvalidArgument, NotFound, quote

ID_LENGTH = 64  # no prefix longer than a full ID can match

T = TypeVar("T")


class IdIndex(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, item_id: str, item: T) -> None:
        self._items[item_id] = item

    def remove(self, item_id: str) -> None:
        self._items.pop(item_id, None)

    def find(self, id_or_prefix: str) -> T | None:
        if not id_or_prefix:
            raise InvalidArgument(f"{self.kind} ID must not be empty")
        item = self._items.get(id_or_prefix)
        if item is not None:
            return item
        if len(id_or_prefix) >= ID_LENGTH:
            return None
        matches = [k for k in self._items if k.startswith(id_or_prefix)]
        if len(matches) > 1:
            raise InvalidArgument(f"{self.kind} ID prefix {quote(id_or_prefix)} is ambiguous")
        return self._items[matches[0]] if matches else None

    def get(self, id_or_prefix: str) -> T:
        item = self.find(id_or_prefix)
        if item is None:
            raise NotFound(f"{self.kind} {quote(id_or_prefix)} not found")
        return item

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items
