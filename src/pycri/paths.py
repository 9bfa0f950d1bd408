"""Where pycri keeps its files: one value object for the layout under ROOT and STATE.

``ROOT`` (``/var/lib/pycri``) is persistent, ``STATE`` (``/run/pycri``, a tmpfs) volatile:

    ROOT/containers/<id>/status         a container's status checkpoint
    ROOT/sandboxes/<id>/                 a pod's hostname, hosts, resolv.conf, status checkpoint
    ROOT/containerd/                     the managed containerd's root
    ROOT/creating/<id>                   an object being created, until it is complete or
                                         undone (the undo journal, ``service/undo.py``)
    STATE/containers/<id>/io/            a container's stdio FIFOs
    STATE/containers/<id>/exec/<exec>/   an exec's FIFOs
    ROOT/runtime-config.json             what kubelet sent in UpdateRuntimeConfig (pod CIDR)
    STATE/netns/<sandbox id>             network namespace pins
    STATE/runtimes/<handler>/            an OCI runtime's state root (runc shim's ``Root``)
    STATE/checkpoints/<id>/              CRIU's work dir while a container is checkpointed
    STATE/containerd/                    the managed containerd's state and socket
    STATE/pycri.lock                     one daemon per state dir

The daemon, recovery, gc and the tests all derive paths from here, so the layout is written
down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path
    state: Path

    @property
    def sandboxes_dir(self) -> Path:
        return self.root / "sandboxes"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def undo_dir(self) -> Path:
        return self.root / "creating"

    def undo_entry(self, object_id: str) -> Path:
        return self.undo_dir / object_id

    @property
    def container_state_dir(self) -> Path:
        return self.state / "containers"

    @property
    def netns_dir(self) -> Path:
        return self.state / "netns"

    @property
    def lock_file(self) -> Path:
        return self.state / "pycri.lock"

    @property
    def runtime_config_file(self) -> Path:
        return self.root / "runtime-config.json"

    def runtime_root(self, handler: str) -> Path:
        """The state root of a runtime handler's OCI binary (the shim adds the namespace)."""
        return self.state / "runtimes" / handler

    def checkpoint_work_dir(self, container_id: str) -> Path:
        return self.state / "checkpoints" / container_id

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.sandboxes_dir / sandbox_id

    def sandbox_status(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "status"

    def container_dir(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    def container_status(self, container_id: str) -> Path:
        return self.container_dir(container_id) / "status"

    def container_run_dir(self, container_id: str) -> Path:
        """Everything volatile of one container (its FIFOs and its execs' FIFOs)."""
        return self.container_state_dir / container_id

    def container_io_dir(self, container_id: str) -> Path:
        return self.container_run_dir(container_id) / "io"

    def exec_io_dir(self, container_id: str, exec_id: str) -> Path:
        return self.container_run_dir(container_id) / "exec" / exec_id
