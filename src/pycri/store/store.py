"""The in-memory store of one kind of object (sandboxes or containers), indexed by ID.

A thin layer over ``IdIndex`` (full IDs and unique prefixes) shared by both kinds, so they
resolve IDs, refuse ambiguity and report NOT_FOUND the same way. Reads never await: a
caller iterating ``all()`` gets a list copy, safe while other coroutines add and remove.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from pycri.store.index import IdIndex


class HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=HasId)


class Store(Generic[T]):
    def __init__(self, kind: str) -> None:
        self._index: IdIndex[T] = IdIndex(kind)

    def add(self, item: T) -> None:
        self._index.add(item.id, item)

    def get(self, id_or_prefix: str) -> T:
        """The object; NotFound if there is none, InvalidArgument for an ambiguous prefix."""
        return self._index.get(id_or_prefix)

    def find(self, id_or_prefix: str) -> T | None:
        return self._index.find(id_or_prefix)

    def remove(self, item_id: str) -> None:
        self._index.remove(item_id)

    def all(self) -> list[T]:
        return list(self._index)

    def where(self, predicate: Callable[[T], bool]) -> list[T]:
        return [item for item in self._index if predicate(item)]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index
