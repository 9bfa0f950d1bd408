"""The CNI conf dir, watched: the current network configuration as an in-memory snapshot.

Status (kubelet calls it every few seconds) and RunPodSandbox read ``ConfigWatcher.state``,
an immutable ``NetworkState``, and never touch the disk. A background task polls instead:
every ``interval`` it lists the conf dir and stats the first config file and the plugin
binaries that file names (in a worker thread; a handful of syscalls). Only when that
fingerprint changes — another file sorts first, the file is rewritten (inode, mtime, size),
a plugin appears or vanishes — is the file parsed again and the plugins asked for their
versions (``PluginRunner.validate``, a few short subprocesses). So a config dropped in,
fixed, broken or removed is seen within about one interval, without a restart and without
inotify (which the conf dir need not support, and which a missing dir cannot have).

Races: a config file read while being written fails to parse; the writer's final mtime
differs, so the next poll reads it again (tools that write a temp file and rename it avoid
even that). A refresh runs alone (a lock), and a state is published whole, so readers see
either the old or the new configuration, never a mix. A pod set up with the old
configuration keeps it for its DEL (it is stored in the pod's metadata), so a change never
strands the pods that already exist.

The three states: *absent* (no config file: pods get only loopback, NetworkReady false),
*invalid* (a file exists but does not parse or its plugins are missing/incompatible:
NetworkReady false, new pods are refused with the reason), *ready*.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pycri.net.cni import (
    CNIConfigError,
    NetworkConfigList,
    PluginRunner,
    config_files,
    find_plugin,
    load_file,
)

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0


@dataclass(frozen=True, kw_only=True)
class NetworkState:
    """What the conf dir held at the last poll (immutable; replaced whole)."""

    network: NetworkConfigList | None = None
    present: bool = False  # a config file exists, valid or not
    error: str = "cni config not loaded yet"

    @property
    def ready(self) -> bool:
        return self.network is not None and not self.error


_FileKey = tuple[str, int, int, int]  # path, inode, mtime ns, size


def _file_key(path: Path) -> _FileKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True)
class _Scan:
    fingerprint: tuple[object, ...]
    state: NetworkState


class ConfigWatcher:
    """Keeps ``state`` in step with ``conf_dir``; ``start`` polls, ``refresh`` polls once."""

    def __init__(
        self, *, conf_dir: Path, runner: PluginRunner, interval: float = DEFAULT_INTERVAL
    ) -> None:
        self.conf_dir = conf_dir
        self.runner = runner
        self.interval = interval
        self.state = NetworkState()
        self._fingerprint: tuple[object, ...] | None = None
        self._parsed: tuple[_FileKey, NetworkConfigList | CNIConfigError] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def _scan(self) -> _Scan:
        """List, stat and (if the file changed) parse; blocking, runs in a worker thread."""
        files = config_files(self.conf_dir)
        if not files:
            message = f"cni plugin not initialized: no network config found in {self.conf_dir}"
            return _Scan(("absent",), NetworkState(error=message))
        first = files[0]
        key = _file_key(first)
        if key is None:  # removed between the listing and the stat: keep, look again later
            return _Scan(self._fingerprint or ("vanished",), self.state)
        if self._parsed is None or self._parsed[0] != key:
            try:
                parsed: NetworkConfigList | CNIConfigError = load_file(first)
            except CNIConfigError as err:
                parsed = err
            self._parsed = (key, parsed)
        parsed = self._parsed[1]
        if isinstance(parsed, CNIConfigError):
            return _Scan(("invalid", key), NetworkState(present=True, error=str(parsed)))
        plugins = tuple(
            (t, _file_key(p) if (p := find_plugin(t, self.runner.bin_dirs)) else None)
            for t in parsed.plugin_types
        )
        # not ready until validated; the caller validates when the fingerprint is new
        return _Scan(("loaded", key, plugins), NetworkState(network=parsed, present=True, error=""))

    async def refresh(self) -> NetworkState:
        """Poll once: re-read and re-validate if anything changed; the (new) state."""
        async with self._lock:
            scan = await asyncio.to_thread(self._scan)
            if scan.fingerprint == self._fingerprint:
                return self.state
            state = scan.state
            if state.network is not None:
                try:
                    await self.runner.validate(state.network)
                except CNIConfigError as err:
                    state = NetworkState(network=state.network, present=True, error=str(err))
            self._fingerprint = scan.fingerprint
            self._publish(state)
            return state

    def _publish(self, state: NetworkState) -> None:
        old, self.state = self.state, state
        if state.ready:
            assert state.network is not None
            log.info(
                "cni network config loaded",
                extra={
                    "file": state.network.source,
                    "network": state.network.name,
                    "cni_version": state.network.cni_version,
                    "plugins": ",".join(state.network.plugin_types),
                },
            )
        elif state.error != old.error:
            level = logging.WARNING if state.present else logging.INFO
            log.log(level, "cni network not ready", extra={"reason": state.error})

    async def start(self) -> None:
        """Load now (so the first Status is right), then keep polling in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="cni-config-watch")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception as err:  # a bad poll must not end the watch
                log.error("cni config poll failed", extra={"error": repr(err)})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def describe(state: NetworkState, *, conf_dir: Path, bin_dirs: Sequence[str]) -> dict[str, object]:
    """The verbose Status view of the network configuration."""
    network = state.network
    return {
        "confDir": str(conf_dir),
        "binDirs": list(bin_dirs),
        "ready": state.ready,
        "error": state.error,
        "file": network.source if network else "",
        "network": network.name if network else "",
        "cniVersion": network.cni_version if network else "",
        "plugins": network.plugin_types if network else [],
    }
