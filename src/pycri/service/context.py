"""What every RPC implementation gets: config, the containerd client, the stores, the monitor.

RPC modules are plain async functions ``rpc(rt, request) -> response``; they share state only
through this object, which the daemon builds once. Tests build it with real parts too.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycri.config import Config
from pycri.containerd.client import ContainerdClient
from pycri.containerd.health import ContainerdHealth


@dataclass(kw_only=True)
class RuntimeContext:
    config: Config
    containerd: ContainerdClient
    health: ContainerdHealth

    def network_status(self) -> tuple[bool, str]:
        """(ready, message) of pod networking; CNI comes with the networking issue."""
        return False, f"cni plugin not initialized: no network config in {self.config.cni_conf_dir}"
