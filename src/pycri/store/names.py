"""The name index: reserves CRI names so that two creates of the same name conflict.

kubelet names a sandbox ``<pod>_<namespace>_<uid>_<attempt>`` and a container
``<container>_<pod>_<namespace>_<uid>_<attempt>``; a second RunPodSandbox/CreateContainer
with the same metadata while the first exists is a kubelet bug or a retry, and must fail
with ALREADY_EXISTS naming the holder. Reservation happens first in a create and is released
on failure or on remove, so a name is never held by a half-made object for long.
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.errors import AlreadyExists


def sandbox_name(meta: api_pb2.PodSandboxMetadata) -> str:
    return "_".join([meta.name, meta.namespace, meta.uid, str(meta.attempt)])


def container_name(meta: api_pb2.ContainerMetadata, sandbox: api_pb2.PodSandboxMetadata) -> str:
    return "_".join([meta.name, sandbox.name, sandbox.namespace, sandbox.uid, str(meta.attempt)])


class NameIndex:
    def __init__(self) -> None:
        self._by_name: dict[str, str] = {}

    def reserve(self, name: str, owner_id: str) -> None:
        holder = self._by_name.get(name)
        if holder is not None and holder != owner_id:
            raise AlreadyExists(f"name {name!r} is reserved for {holder}")
        self._by_name[name] = owner_id

    def release(self, name: str, owner_id: str | None = None) -> None:
        if owner_id is None or self._by_name.get(name) == owner_id:
            self._by_name.pop(name, None)

    def holder(self, name: str) -> str | None:
        return self._by_name.get(name)
