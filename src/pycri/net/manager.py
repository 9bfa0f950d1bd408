"""A pod's network: CNI ADD when its sandbox is made, DEL when it is stopped, and the rest.

``PodNetwork`` is the one object the sandbox RPCs talk to for networking (``rt.network``):

- ``network_for_pod()`` — the configuration a new pod gets, from memory (the watcher's
  snapshot, see ``pycri.net.watch``). No config file at all is pycri's documented
  **degraded mode**: the pod still runs, in its own network namespace with only loopback
  up, and Status says NetworkReady=false (useful without a CNI setup, e.g. for host-network
  clusters and tests; containerd would refuse the pod instead). A config that exists but is
  invalid refuses the pod with the reason (FAILED_PRECONDITION): an admin who configured
  CNI wants networked pods, not silently isolated ones.
- ``setup()`` — CNI ADD in the pod's (already pinned) namespace with the pod's CNI_ARGS
  (``IgnoreUnknown=1;K8S_POD_NAMESPACE;K8S_POD_NAME;K8S_POD_INFRA_CONTAINER_ID;K8S_POD_UID``)
  and runtimeConfig (``portMappings`` from the PodSandboxConfig's host ports, ``dns``);
  returns the pod IPs (IPv4 first) and the raw result. A failure is the plugin's error.
- ``teardown()`` — CNI DEL with the configuration stored in the pod's metadata, then the
  namespace's removal. DEL is retried a few times with a short backoff inside one call and
  raised (reported to the caller, kubelet retries) if it keeps failing; the namespace is
  kept then, so the next DEL still finds the pod's interface. ``give_up=True`` (a
  RemovePodSandbox after repeated failures) logs what may leak and removes the namespace
  anyway, so a broken plugin never blocks removal forever.
- ``check()`` — CNI CHECK of a running pod (used after recovery, results only logged).

Crash safety lives in the callers' order (see ``service/sandbox_run``): the network config
is written into the sandbox's containerd record *before* ADD and the result right after,
so a pycri killed at any point leaves a record from which StopPodSandbox can run DEL. DEL
on something already released is a success for every well-behaved plugin, so running it
again after a crash, a retry or a reboot (namespace gone: ``CNI_NETNS`` empty) is safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2

from pycri.errors import CRIError, FailedPrecondition
from pycri.net.cni import (
    DEFAULT_TIMEOUT,
    AddProgress,
    CNIConfigError,
    CNIError,
    NetworkConfigList,
    PluginRunner,
    RuntimeConf,
    pod_ips,
)
from pycri.net.netns import NetNS, is_pinned
from pycri.net.watch import DEFAULT_INTERVAL, ConfigWatcher, describe
from pycri.store.sandbox import SandboxMetadata

log = logging.getLogger(__name__)

IFNAME = "eth0"
DEL_ATTEMPTS = 3  # per teardown call
DEL_BACKOFF = 0.5  # seconds before the 2nd attempt, doubling
CHECK_CONCURRENCY = 4
PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}


class NetworkSetupError(CRIError):
    """CNI ADD failed; the message is the plugin's."""


class NetworkTeardownError(CRIError):
    """CNI DEL kept failing; the pod's network may still hold resources."""


@dataclass(frozen=True, kw_only=True)
class Attachment:
    """What CNI ADD gave a pod."""

    ip: str
    additional_ips: tuple[str, ...]
    result: dict[str, Any]


def capability_args(config: api_pb2.PodSandboxConfig) -> dict[str, Any]:
    """runtimeConfig values: host port mappings (portmap) and DNS (for plugins that ask)."""
    mappings = []
    for pm in config.port_mappings:
        if pm.host_port <= 0:  # container-port-only entries are informational
            continue
        mapping: dict[str, Any] = {
            "hostPort": pm.host_port,
            "containerPort": pm.container_port,
            "protocol": PROTOCOLS.get(pm.protocol, "tcp"),
        }
        if pm.host_ip:
            mapping["hostIP"] = pm.host_ip
        mappings.append(mapping)
    args: dict[str, Any] = {"portMappings": mappings}
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        args["dns"] = {
            "servers": list(dns.servers),
            "searches": list(dns.searches),
            "options": list(dns.options),
        }
    return args


def runtime_conf(*, sandbox_id: str, config: api_pb2.PodSandboxConfig, netns: str) -> RuntimeConf:
    meta = config.metadata
    return RuntimeConf(
        container_id=sandbox_id,
        netns=netns,
        ifname=IFNAME,
        args=(
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", meta.namespace),
            ("K8S_POD_NAME", meta.name),
            ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
            ("K8S_POD_UID", meta.uid),
        ),
        capability_args=capability_args(config),
    )


class PodNetwork:
    """CNI for pods: the watched configuration and per-sandbox setup/teardown."""

    def __init__(
        self,
        *,
        conf_dir: Path,
        bin_dirs: Sequence[str],
        netns: NetNS,
        plugin_timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.netns = netns
        self.runner = PluginRunner(bin_dirs=bin_dirs, timeout=plugin_timeout)
        self.watcher = ConfigWatcher(conf_dir=conf_dir, runner=self.runner, interval=poll_interval)
        self._checks: set[asyncio.Task[None]] = set()
        self._check_slots = asyncio.Semaphore(CHECK_CONCURRENCY)
        self.teardown_failures = 0  # every failed DEL attempt, for metrics

    async def start(self) -> None:
        await self.watcher.start()

    async def stop(self) -> None:
        await self.watcher.stop()
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)

    # --- state, from memory -------------------------------------------------------------

    def status(self) -> tuple[bool, str]:
        """(NetworkReady, message) for Status."""
        state = self.watcher.state
        return state.ready, state.error

    def describe(self) -> dict[str, object]:
        return describe(
            self.watcher.state, conf_dir=self.watcher.conf_dir, bin_dirs=self.runner.bin_dirs
        )

    def network_for_pod(self) -> NetworkConfigList | None:
        """The network a new pod joins; None in degraded mode (no config: loopback only)."""
        state = self.watcher.state
        if state.ready:
            return state.network
        if not state.present:
            return None
        raise FailedPrecondition(f"pod network is not ready: {state.error}")

    # --- per sandbox --------------------------------------------------------------------

    async def setup(
        self,
        *,
        sandbox_id: str,
        config: api_pb2.PodSandboxConfig,
        netns_path: str,
        network: NetworkConfigList,
        progress: AddProgress | None = None,
    ) -> Attachment:
        """CNI ADD; on failure (or cancellation) the caller must ``teardown``, passing the
        same ``progress`` so only the plugins whose ADD completed must DEL cleanly."""
        started = time.monotonic()
        runtime = runtime_conf(sandbox_id=sandbox_id, config=config, netns=netns_path)
        try:
            result = await self.runner.add(network, runtime, progress=progress)
        except CNIError as err:
            raise NetworkSetupError(
                f"failed to set up network {network.name!r} for sandbox {sandbox_id}: {err}"
            ) from None
        ips = pod_ips(result, ifname=IFNAME)
        log.info(
            "pod network set up",
            extra={
                "sandbox_id": sandbox_id,
                "network": network.name,
                "ips": ",".join(ips),
                "duration_ms": round((time.monotonic() - started) * 1e3, 1),
            },
        )
        return Attachment(ip=ips[0] if ips else "", additional_ips=tuple(ips[1:]), result=result)

    async def _netns_for_del(self, metadata: SandboxMetadata) -> str:
        if metadata.netns_path:
            pinned = await asyncio.to_thread(is_pinned, Path(metadata.netns_path))
            if pinned:
                return metadata.netns_path
        return ""  # gone (reboot, crash after removal): plugins release what they can

    async def delete(
        self,
        metadata: SandboxMetadata,
        *,
        attempts: int = DEL_ATTEMPTS,
        progress: AddProgress | None = None,
    ) -> None:
        """CNI DEL with the pod's stored config, retried; NetworkTeardownError at last."""
        if metadata.cni_network is None:
            return  # no CNI ever ran for it (host network, degraded mode)
        try:
            network = NetworkConfigList.from_json(metadata.cni_network)
        except CNIConfigError as err:
            raise NetworkTeardownError(
                f"sandbox {metadata.id}: stored network config unusable: {err}"
            ) from None
        runtime = runtime_conf(
            sandbox_id=metadata.id,
            config=metadata.config,
            netns=await self._netns_for_del(metadata),
        )
        delay = DEL_BACKOFF
        for attempt in range(1, attempts + 1):
            try:
                await self.runner.delete(network, runtime, metadata.cni_result, progress=progress)
            except CNIError as err:
                self.teardown_failures += 1
                log.warning(
                    "pod network DEL failed",
                    extra={"sandbox_id": metadata.id, "attempt": attempt, "error": str(err)},
                )
                if attempt == attempts:
                    raise NetworkTeardownError(
                        f"failed to tear down network {network.name!r} of sandbox "
                        f"{metadata.id} ({attempts} attempts): {err}"
                    ) from None
                await asyncio.sleep(delay)
                delay *= 2
            else:
                log.info(
                    "pod network torn down",
                    extra={"sandbox_id": metadata.id, "network": network.name},
                )
                return

    async def teardown(
        self,
        metadata: SandboxMetadata,
        *,
        give_up: bool = False,
        progress: AddProgress | None = None,
    ) -> None:
        """DEL then remove the namespace. ``give_up``: a failing DEL is logged, not raised.
        ``progress``: the pod's ADD did not complete (RunPodSandbox rolling back)."""
        try:
            await self.delete(metadata, progress=progress)
        except NetworkTeardownError as err:
            if not give_up:
                raise
            log.error(
                "giving up pod network teardown; its IPs or rules may leak",
                extra={
                    "sandbox_id": metadata.id,
                    "error": str(err),
                    "ips": ",".join(filter(None, (metadata.ip, *metadata.additional_ips))),
                    "cni_result": metadata.cni_result,
                },
            )
        if metadata.netns_path:
            await self.netns.remove(Path(metadata.netns_path))

    async def ensure_netns(self, metadata: SandboxMetadata, *, pid: int) -> bool:
        """Re-pin a running pod's namespace from its pause process if the pin is gone."""
        if not metadata.netns_path or not pid:
            return False
        path = Path(metadata.netns_path)
        if await asyncio.to_thread(is_pinned, path):
            return False
        await self.netns.pin(path, pid=pid)
        log.warning(
            "network namespace pin was missing; re-pinned from the pause process",
            extra={"sandbox_id": metadata.id, "pid": pid, "netns": str(path)},
        )
        return True

    async def check(self, metadata: SandboxMetadata) -> bool:
        """CNI CHECK of a set-up pod; False when not applicable; raises CNIError."""
        if metadata.cni_network is None or metadata.cni_result is None:
            return False
        network = NetworkConfigList.from_json(metadata.cni_network)
        runtime = runtime_conf(
            sandbox_id=metadata.id, config=metadata.config, netns=metadata.netns_path
        )
        return await self.runner.check(network, runtime, metadata.cni_result)

    def check_later(self, metadata: SandboxMetadata) -> None:
        """CHECK in the background (bounded concurrency); a failure is logged."""

        async def run() -> None:
            async with self._check_slots:
                try:
                    if await self.check(metadata):
                        log.debug("pod network check passed", extra={"sandbox_id": metadata.id})
                except CNIError as err:
                    log.warning(
                        "pod network check failed",
                        extra={"sandbox_id": metadata.id, "error": str(err)},
                    )

        task = asyncio.create_task(run(), name=f"cni-check-{metadata.id[:12]}")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
