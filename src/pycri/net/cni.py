"""CNI: network configuration lists and the execution of their plugins (CNI spec 0.3 to 1.0).

Configuration
    The network is the first file by name in the conf dir ending in ``.conflist``, ``.conf``
    or ``.json`` (a ``.conf``/``.json`` file holds one plugin and becomes a one-plugin list).
    It is parsed into an immutable ``NetworkConfigList``; ``validate`` then checks what can be
    checked without touching a pod: every plugin (and IPAM plugin) binary is found in the bin
    dirs and says, through the ``VERSION`` command, that it speaks the list's ``cniVersion``.
    The list a pod was set up with is stored in the pod's metadata (``to_json``), so its DEL
    runs the same plugins with the same settings even after the conf dir changed — the CNI
    spec wants DEL called with the configuration ADD had.

Execution (``PluginRunner``)
    One process per plugin invocation, as an asyncio subprocess (never blocking the loop),
    with the spec's environment (``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``,
    ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``) on top of pycri's own (plugins such as portmap
    run ``iptables`` from ``PATH``) and the plugin's configuration on stdin: the plugin's own
    object plus the list's ``name`` and ``cniVersion``, ``runtimeConfig`` with exactly the
    capabilities the plugin declares (``portMappings``, ``dns``...), and ``prevResult``.

    - ADD runs the plugins in list order; each one's result is the next one's ``prevResult``;
      the last result is the network's result. A failing plugin stops the chain: the caller
      must then run DEL (the spec's rule; the plugins before it made things).
    - DEL runs them in reverse order with the ADD result as ``prevResult`` (0.4.0+). Unlike a
      strict chain it does not stop at the first failure: each plugin releases what it owns
      (the IP, the iptables rules, the veth), so one broken plugin leaks only its own part;
      the first error is raised after all ran. Plugins must treat DEL of something already
      gone as success, so DEL is safe to repeat (after a crash, a retry, a missing netns).
    - DEL after a failed ADD (``AddProgress``): only the plugins whose ADD completed must DEL
      cleanly. The plugin that failed and those after it are still called, but their DEL
      errors are logged and ignored — typically the same broken setting that failed the ADD
      (a bad IPAM subnet fails host-local's DEL too), and they hold nothing: a plugin cleans
      up its own half-done ADD, and what it left in the pod's namespace (the veth) goes with
      the namespace. Without this a broken config would strand every pod that tried it.
    - CHECK (0.4.0+, unless ``disableCheck``) runs them in order with the ADD result.

    Every invocation has a timeout. On timeout *or cancellation* (a client that hangs up
    mid-RunPodSandbox) the plugin's process group is killed and reaped before the error
    propagates, so a DEL that follows never races a still-running ADD.

    A failing plugin exits non-zero with a JSON error on stdout (``code``, ``msg``,
    ``details``); ``CNIPluginError`` carries it with the plugin type and command, and its
    message is the plugin's own words (kubelet shows them in the pod's events).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
DEFAULT_TIMEOUT = 30.0


class CNIError(Exception):
    """A CNI operation failed; the message says which and why."""


class CNIConfigError(CNIError):
    """The network configuration is missing, unreadable, invalid, or its plugins are."""


class CNIPluginError(CNIError):
    """A plugin ran and reported failure (or died, or timed out)."""

    def __init__(
        self, *, plugin: str, command: str, message: str, code: int = 0, details: str = ""
    ) -> None:
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = message
        self.details = details
        text = f'plugin type="{plugin}" failed ({command.lower()}): {message}'
        if details and details not in message:
            text += f": {details}"
        super().__init__(text)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.4.0"`` → ``(0, 4, 0)``; raises ValueError for anything else."""
    parts = version.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid CNI version {version!r}")
    return tuple(int(p) for p in parts) + (0,) * (3 - len(parts))


@dataclass(frozen=True, kw_only=True)
class NetworkConfigList:
    """One CNI network: a name, a spec version and the plugins to chain (immutable)."""

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    disable_check: bool = False
    source: str = ""  # the file it came from ("" when rebuilt from a pod's metadata)

    @property
    def plugin_types(self) -> list[str]:
        """Every plugin binary the list needs: the plugins and their IPAM plugins."""
        types: list[str] = []
        for plugin in self.plugins:
            types.append(str(plugin["type"]))
            ipam = plugin.get("ipam")
            if isinstance(ipam, Mapping) and isinstance(ipam.get("type"), str) and ipam["type"]:
                types.append(ipam["type"])
        return list(dict.fromkeys(types))

    def to_json(self) -> dict[str, Any]:
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": [dict(p) for p in self.plugins],
        }

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "") -> NetworkConfigList:
        """Parse a conflist document (or a single-plugin ``.conf`` one); CNIConfigError."""
        where = source or "network config"
        if not isinstance(doc, dict):
            raise CNIConfigError(f"{where}: not a JSON object")
        if "plugins" in doc:
            plugins = doc["plugins"]
            if not isinstance(plugins, list) or not plugins:
                raise CNIConfigError(f"{where}: 'plugins' must be a non-empty list")
        elif "type" in doc:
            plugins = [doc]  # a .conf: one plugin, its own name and version
        else:
            raise CNIConfigError(f"{where}: neither 'plugins' nor 'type' present")
        name, version = doc.get("name"), doc.get("cniVersion")
        if not isinstance(name, str) or not name:
            raise CNIConfigError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(version, str):
            raise CNIConfigError(f"{where}: 'cniVersion' must be a string")
        try:
            version_tuple(version)
        except ValueError as err:
            raise CNIConfigError(f"{where}: {err}") from None
        for index, plugin in enumerate(plugins):
            if not isinstance(plugin, dict):
                raise CNIConfigError(f"{where}: plugin {index} is not an object")
            kind = plugin.get("type")
            if not isinstance(kind, str) or not kind or "/" in kind:
                raise CNIConfigError(f"{where}: plugin {index} needs a plain 'type'")
        disable_check = doc.get("disableCheck", False)
        if not isinstance(disable_check, bool):
            raise CNIConfigError(f"{where}: 'disableCheck' must be true or false")
        return cls(
            name=name,
            cni_version=version,
            plugins=tuple(json.loads(json.dumps(p)) for p in plugins),  # private deep copy
            disable_check=disable_check,
            source=source,
        )


def config_files(conf_dir: Path) -> list[Path]:
    """Candidate network config files, by name (blocking: call from a thread)."""
    try:
        entries = sorted(conf_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [p for p in entries if p.suffix in CONFIG_SUFFIXES and p.is_file()]


def load_file(path: Path) -> NetworkConfigList:
    """Read and parse one config file (blocking); CNIConfigError names the file."""
    try:
        text = path.read_text()
    except OSError as err:
        raise CNIConfigError(f"{path}: {err.strerror or err}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise CNIConfigError(f"{path}: invalid JSON: {err}") from None
    return NetworkConfigList.from_json(doc, source=str(path))


def find_plugin(plugin_type: str, bin_dirs: Sequence[str]) -> Path | None:
    """The first executable ``plugin_type`` in ``bin_dirs`` (blocking, a few stats)."""
    for directory in bin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_plugins(network: NetworkConfigList, bin_dirs: Sequence[str]) -> list[str]:
    return [t for t in network.plugin_types if find_plugin(t, bin_dirs) is None]


def pod_ips(result: Mapping[str, Any] | None, *, ifname: str = "eth0") -> list[str]:
    """The pod's addresses in a CNI result, IPv4 first, without prefix length or loopback.

    Understands 0.3.0+ results (``ips`` with ``address`` and an ``interface`` index: only
    addresses on the pod's ``ifname`` interface, or on no named interface, count) and
    0.1/0.2 ones (``ip4``/``ip6``).
    """
    if not result:
        return []
    raw: list[str] = []
    interfaces = result.get("interfaces") or []
    for entry in result.get("ips") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("address"), str):
            continue
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            iface = interfaces[index]
            if isinstance(iface, Mapping) and iface.get("name") not in (None, "", ifname):
                continue
        raw.append(entry["address"])
    for key in ("ip4", "ip6"):
        legacy = result.get(key)
        if isinstance(legacy, Mapping) and isinstance(legacy.get("ip"), str):
            raw.append(legacy["ip"])
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in raw:
        try:
            address = ipaddress.ip_interface(text).ip
        except ValueError:
            continue
        if not address.is_loopback and address not in addresses:
            addresses.append(address)
    addresses.sort(key=lambda a: a.version)  # stable: IPv4 first, then IPv6, each in order
    return [str(a) for a in addresses]


@dataclass(kw_only=True)
class AddProgress:
    """How far an ADD got (mutable, filled in by ``PluginRunner.add`` as it goes)."""

    applied: int = 0  # plugins, in list order, whose ADD succeeded
    complete: bool = False


@dataclass(frozen=True, kw_only=True)
class RuntimeConf:
    """What one pod attachment passes to every plugin besides the network config."""

    container_id: str
    netns: str  # "" when the namespace is already gone (DEL only)
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()  # CNI_ARGS, in order
    # runtimeConfig values by capability name; a plugin gets those it declares
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def environ(self, command: str, cni_path: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=self.container_id,
            CNI_NETNS=self.netns,
            CNI_IFNAME=self.ifname,
            CNI_ARGS=";".join(f"{k}={v}" for k, v in self.args),
            CNI_PATH=cni_path,
        )
        return env


def plugin_stdin(
    network: NetworkConfigList,
    plugin: Mapping[str, Any],
    runtime: RuntimeConf,
    prev_result: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The JSON a plugin reads: its config, the list's name/version, runtimeConfig, prevResult."""
    doc: dict[str, Any] = json.loads(json.dumps(plugin))
    doc["name"] = network.name
    doc["cniVersion"] = network.cni_version
    capabilities = plugin.get("capabilities")
    runtime_config: dict[str, Any] = {}
    if isinstance(capabilities, Mapping):
        for capability, enabled in capabilities.items():
            if enabled is True and capability in runtime.capability_args:
                runtime_config[capability] = runtime.capability_args[capability]
    if runtime_config:
        doc["runtimeConfig"] = runtime_config
    else:
        doc.pop("runtimeConfig", None)
    if prev_result is not None:
        doc["prevResult"] = prev_result
    else:
        doc.pop("prevResult", None)
    return doc


class PluginRunner:
    """Runs CNI plugins found in ``bin_dirs``, each invocation bounded by ``timeout``."""

    def __init__(self, *, bin_dirs: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.bin_dirs = list(bin_dirs)
        self.timeout = timeout

    @property
    def cni_path(self) -> str:
        return ":".join(self.bin_dirs)

    async def _find(self, plugin_type: str, command: str) -> Path:
        path = await asyncio.to_thread(find_plugin, plugin_type, self.bin_dirs)
        if path is None:
            raise CNIPluginError(
                plugin=plugin_type,
                command=command,
                message=f"failed to find plugin {plugin_type!r} in path {self.bin_dirs}",
            )
        return path

    async def exec(
        self,
        plugin_type: str,
        *,
        command: str,
        stdin: Mapping[str, Any],
        env: Mapping[str, str],
    ) -> dict[str, Any] | None:
        """Run one plugin; its parsed stdout (None when empty); CNIPluginError on failure."""
        path = await self._find(plugin_type, command)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            start_new_session=True,  # its own process group: a kill reaches its children
        )
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await proc.communicate(json.dumps(stdin).encode())
        except TimeoutError:
            await _kill(proc)
            raise CNIPluginError(
                plugin=plugin_type,
                command=command,
                message=f"timed out after {self.timeout:g}s",
            ) from None
        except BaseException:  # cancelled: never leave the plugin running behind our back
            await asyncio.shield(_kill(proc))
            raise
        duration_ms = round((time.monotonic() - started) * 1e3, 1)
        log.debug(
            "cni plugin ran",
            extra={
                "plugin": plugin_type,
                "command": command,
                "rc": proc.returncode,
                "duration_ms": duration_ms,
            },
        )
        if proc.returncode != 0:
            raise _plugin_error(plugin_type, command, proc.returncode, out, err)
        if not out.strip():
            return None
        try:
            parsed = json.loads(out)
        except json.JSONDecodeError as error:
            raise CNIPluginError(
                plugin=plugin_type, command=command, message=f"invalid result JSON: {error}"
            ) from None
        if not isinstance(parsed, dict):
            raise CNIPluginError(
                plugin=plugin_type, command=command, message="result is not a JSON object"
            )
        return parsed

    async def add(
        self,
        network: NetworkConfigList,
        runtime: RuntimeConf,
        *,
        progress: AddProgress | None = None,
    ) -> dict[str, Any]:
        """ADD through the chain; the final result. On error the caller must DEL."""
        progress = progress if progress is not None else AddProgress()
        env = runtime.environ("ADD", self.cni_path)
        result: dict[str, Any] | None = None
        for plugin in network.plugins:
            stdin = plugin_stdin(network, plugin, runtime, result)
            out = await self.exec(str(plugin["type"]), command="ADD", stdin=stdin, env=env)
            if out is None:
                raise CNIPluginError(
                    plugin=str(plugin["type"]), command="ADD", message="empty result"
                )
            result = out
            progress.applied += 1
        assert result is not None  # a list has at least one plugin
        progress.complete = True
        return result

    async def delete(
        self,
        network: NetworkConfigList,
        runtime: RuntimeConf,
        prev_result: Mapping[str, Any] | None,
        *,
        progress: AddProgress | None = None,
    ) -> None:
        """DEL through the chain in reverse; every plugin runs; the first error that counts
        (all, or after a failed ADD only those of plugins whose ADD completed) is raised."""
        env = runtime.environ("DEL", self.cni_path)
        if version_tuple(network.cni_version) < (0, 4, 0):
            prev_result = None  # before 0.4.0 DEL had no prevResult
        must_succeed = len(network.plugins)
        if progress is not None and not progress.complete:
            must_succeed = progress.applied
        first: CNIPluginError | None = None
        for index in reversed(range(len(network.plugins))):
            plugin = network.plugins[index]
            stdin = plugin_stdin(network, plugin, runtime, prev_result)
            try:
                await self.exec(str(plugin["type"]), command="DEL", stdin=stdin, env=env)
            except CNIPluginError as err:
                counts = index < must_succeed
                log.warning(
                    "cni plugin DEL failed"
                    if counts
                    else "cni plugin DEL failed (ignored: its ADD never completed)",
                    extra={"container_id": runtime.container_id, "error": str(err)},
                )
                if counts:
                    first = first or err
        if first is not None:
            raise first

    async def check(
        self, network: NetworkConfigList, runtime: RuntimeConf, prev_result: Mapping[str, Any]
    ) -> bool:
        """CHECK through the chain; False when the spec version or config rules it out."""
        if network.disable_check or version_tuple(network.cni_version) < (0, 4, 0):
            return False
        env = runtime.environ("CHECK", self.cni_path)
        for plugin in network.plugins:
            stdin = plugin_stdin(network, plugin, runtime, prev_result)
            await self.exec(str(plugin["type"]), command="CHECK", stdin=stdin, env=env)
        return True

    async def versions(self, plugin_type: str, cni_version: str) -> list[str]:
        """The spec versions a plugin supports (its VERSION command)."""
        env = RuntimeConf(container_id="", netns="", ifname="").environ("VERSION", self.cni_path)
        out = await self.exec(
            plugin_type, command="VERSION", stdin={"cniVersion": cni_version}, env=env
        )
        supported = (out or {}).get("supportedVersions")
        if not isinstance(supported, list):
            raise CNIPluginError(
                plugin=plugin_type, command="VERSION", message="no supportedVersions in answer"
            )
        return [str(v) for v in supported]

    async def validate(self, network: NetworkConfigList) -> None:
        """Every plugin is present and speaks the list's version; CNIConfigError if not."""
        where = network.source or network.name
        missing = await asyncio.to_thread(missing_plugins, network, self.bin_dirs)
        if missing:
            raise CNIConfigError(
                f"{where}: CNI plugin(s) {', '.join(missing)} not found in {self.cni_path}"
            )
        for plugin_type in network.plugin_types:
            try:
                supported = await self.versions(plugin_type, network.cni_version)
            except CNIPluginError as err:
                raise CNIConfigError(f"{where}: {err}") from None
            if network.cni_version not in supported:
                raise CNIConfigError(
                    f"{where}: plugin {plugin_type!r} does not support cniVersion "
                    f"{network.cni_version} (supports {', '.join(supported)})"
                )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


def _plugin_error(
    plugin_type: str, command: str, returncode: int | None, out: bytes, err: bytes
) -> CNIPluginError:
    try:
        doc = json.loads(out)
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict) and ("msg" in doc or "code" in doc):
        code = doc.get("code")
        return CNIPluginError(
            plugin=plugin_type,
            command=command,
            message=str(doc.get("msg") or f"error code {code}"),
            code=code if isinstance(code, int) else 0,
            details=str(doc.get("details") or ""),
        )
    text = (err or out).decode(errors="replace").strip()[-2000:]
    return CNIPluginError(
        plugin=plugin_type,
        command=command,
        message=text or f"exited with status {returncode} and no error message",
    )
