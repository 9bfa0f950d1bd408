"""Label selectors of the List RPCs: exact match of every given key (AND)."""

from __future__ import annotations

from collections.abc import Mapping


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
