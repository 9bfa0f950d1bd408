"""pycri's configuration: a TOML file, every key optional, overridden by command-line flags.

Unknown keys and values of the wrong type are refused at start with a message that names the
key, so a typo never silently falls back to a default. ``pycri config default`` prints the
full default configuration (``default_toml``).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/pycri/config.toml")
# containerd plugins pycri never calls, not loaded by the managed containerd by default
# (less memory, fewer start-up probes; see pycri.containerd.supervisor)
UNUSED_CONTAINERD_PLUGINS = (
    # snapshotters other than the configured one (which is never disabled)
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.native",
    # cgroup metrics and OOM events of v1-runtime tasks: pycri runs runc v2 shims, which
    # report their OOMs and stats themselves
    "io.containerd.monitor.v1.cgroups",
    # restarts containers labelled for it: pycri restarts nothing behind kubelet's back
    "io.containerd.internal.v1.restart",
    # installs managed binaries under root/opt: pycri installs none
    "io.containerd.internal.v1.opt",
    # OpenTelemetry export (absent from Debian's 1.6 build; listed for builds that have it)
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


@dataclass(kw_only=True)
class RegistryConfig:
    # host → list of mirror endpoints (``https://mirror:5000``), tried before the host itself
    mirrors: dict[str, list[str]] = field(default_factory=dict)
    # hosts spoken to over plain HTTP or with unverified TLS
    insecure: list[str] = field(default_factory=list)
    # host → path of a PEM CA bundle for that registry
    ca_files: dict[str, str] = field(default_factory=dict)


# containerd runtime types whose shim is containerd's runc shim: ``binary`` and ``options``
# apply to them (other shims take their own options, which pycri does not build).
RUNC_SHIM_TYPES = ("io.containerd.runc.v2", "io.containerd.runc.v1")
# The runc shim's options a handler may set (containerd's names), with their types. The OCI
# binary is ``binary``; ``SystemdCgroup`` must agree with ``cgroup_driver`` (only cgroupfs).
RUNC_OPTION_TYPES: dict[str, type] = {
    "NoPivotRoot": bool,
    "NoNewKeyring": bool,
    "ShimCgroup": str,
    "IoUid": int,
    "IoGid": int,
    "Root": str,
    "SystemdCgroup": bool,
}
CGROUP_DRIVERS = ("cgroupfs",)


@dataclass(kw_only=True)
class RuntimeHandlerConfig:
    """One ``[runtimes.NAME]`` table: the runtime a pod with ``runtime_handler = NAME`` gets."""

    # containerd runtime (shim) type
    runtime_type: str = "io.containerd.runc.v2"
    # the OCI runtime the runc shim runs: an absolute path or a name on PATH; empty: runc
    binary: str = ""
    # runc shim options by containerd's names (NoPivotRoot, NoNewKeyring, ShimCgroup, IoUid,
    # IoGid, Root); Root defaults to STATE/runtimes/NAME
    options: dict[str, Any] = field(default_factory=dict)


def _default_runtimes() -> dict[str, RuntimeHandlerConfig]:
    return {
        "runc": RuntimeHandlerConfig(binary="runc"),
        "crun": RuntimeHandlerConfig(binary="crun"),
    }


@dataclass(kw_only=True)
class Config:
    # CRI socket kubelet/crictl connect to
    socket: str = "/run/pycri/pycri.sock"
    # persistent data (status checkpoints, sandbox files; managed containerd's root)
    root: str = "/var/lib/pycri"
    # volatile data (FIFOs, netns mounts; managed containerd's state and socket)
    state: str = "/run/pycri"
    # an existing containerd's socket; empty: pycri starts and supervises its own
    containerd_address: str = ""
    # the containerd binary for the managed containerd
    containerd_binary: str = "containerd"
    # plugins the managed containerd does not load (its CRI plugin is always off; the
    # configured snapshotter is always kept); [] loads all of them
    managed_containerd_disabled_plugins: list[str] = field(
        default_factory=lambda: list(UNUSED_CONTAINERD_PLUGINS)
    )
    # Go soft memory limit of the managed containerd (GOMEMLIMIT, e.g. "64MiB"); empty: none
    managed_containerd_memory_limit: str = ""
    # Go GC percent of the managed containerd (GOGC); 0: Go's default (100), < 0: off
    managed_containerd_gogc: int = 0
    # image of the pod sandbox (pause) container
    sandbox_image: str = "registry.k8s.io/pause:3.9"
    # the runtime handler of pods whose RunPodSandbox names none (a [runtimes.NAME] table)
    default_runtime_handler: str = "runc"
    # how pod and container cgroups are managed (cgroupfs only; kubelet must agree)
    cgroup_driver: str = "cgroupfs"
    snapshotter: str = "overlayfs"
    # text (for a terminal) or json
    log_format: str = "text"
    log_level: str = "info"
    # host:port of the Prometheus endpoint; empty: off
    metrics_address: str = ""
    # honour pycri.faults/* labels (tests only)
    enable_fault_injection: bool = False
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    # a CNI config template; when kubelet sends the node's pod CIDR (UpdateRuntimeConfig)
    # pycri writes cni_conf_dir/10-pycri-net.conflist from it ({{.PodCIDR}} replaced);
    # empty: never write a CNI config
    cni_conf_template: str = ""
    # container log lines longer than this are split into partial lines (<= 0: never)
    max_container_log_line_size: int = 16384
    # address of the exec/attach/port-forward streaming server
    stream_address: str = "127.0.0.1"
    # its port; 0 picks a free one
    stream_port: int = 0
    # serve the streaming server over TLS (a self-signed certificate unless files are given)
    stream_tls: bool = False
    stream_tls_cert_file: str = ""
    stream_tls_key_file: str = ""
    # seconds without a frame either way after which a stream is closed
    stream_idle_timeout: int = 14400
    # streams open at once; beyond it clients get 429 and retry
    stream_max_concurrent: int = 128
    # ExecSync calls running at once (each may hold up to 16 MiB of output); more wait
    max_concurrent_exec_sync: int = 32
    # seconds between background walks of the snapshotter directory for ImageFsInfo (an
    # image pull or removal triggers one early)
    image_fs_info_period: int = 10
    # cgroup (cgroupfs driver) under which pods whose config names no cgroup_parent are put;
    # give each daemon on a node its own
    cgroup_parent: str = "/pycri"
    # seccomp profile of containers and pods that ask for none (runtime/default, unconfined,
    # localhost/<absolute path>); empty: no filter, as the CRI says
    seccomp_unset_profile: str = ""
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    # runtime handlers by name ([runtimes.NAME]); given tables add to or replace the defaults
    runtimes: dict[str, RuntimeHandlerConfig] = field(default_factory=_default_runtimes)

    @property
    def managed_containerd(self) -> bool:
        return not self.containerd_address

    @property
    def containerd_socket(self) -> str:
        """The socket pycri talks to: the given one, or its managed containerd's."""
        return self.containerd_address or str(Path(self.state) / "containerd" / "containerd.sock")


_GO_MEMORY_LIMIT = re.compile(r"[0-9]+(B|KiB|MiB|GiB|TiB)?")
_CHOICES = {"log_format": ("text", "json"), "log_level": ("debug", "info", "warning", "error")}


def _check_type(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {key!r}: expected a list of strings, got {value!r}")
    elif isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"config key {key!r}: expected a table, got {value!r}")
    return value


def _apply_runtimes(config: Config, data: Any) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"config key 'runtimes': expected a table, got {data!r}")
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"config key 'runtimes.{name}': expected a table, got {table!r}")
        handler = RuntimeHandlerConfig()
        _apply(handler, table, f"runtimes.{name}.")
        config.runtimes[name] = handler


def _apply(target: Any, data: dict[str, Any], prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {name!r}")
        if isinstance(target, Config) and key == "runtimes":
            _apply_runtimes(target, value)
            continue
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r}: expected a table, got {value!r}")
            _apply(current, value, f"{name}.")
            continue
        setattr(target, key, _check_type(name, value, current))


def validate(config: Config) -> Config:
    for key, choices in _CHOICES.items():
        if getattr(config, key) not in choices:
            raise ConfigError(
                f"config key {key!r}: {getattr(config, key)!r} is not one of {', '.join(choices)}"
            )
    for key in ("socket", "root", "state"):
        if not Path(getattr(config, key)).is_absolute():
            raise ConfigError(f"config key {key!r}: {getattr(config, key)!r} must be absolute")
    if not config.cgroup_parent.startswith("/") or any(
        part in ("", ".", "..") for part in config.cgroup_parent.strip("/").split("/")
    ):
        raise ConfigError(
            f"config key 'cgroup_parent': {config.cgroup_parent!r} must be an absolute path "
            "without '..', '.' or empty components"
        )
    if not 0 <= config.stream_port <= 65535:
        raise ConfigError(f"config key 'stream_port': {config.stream_port} is not a port")
    if bool(config.stream_tls_cert_file) != bool(config.stream_tls_key_file):
        raise ConfigError(
            "config keys 'stream_tls_cert_file' and 'stream_tls_key_file' go together"
        )
    for key in (
        "stream_idle_timeout",
        "stream_max_concurrent",
        "max_concurrent_exec_sync",
        "image_fs_info_period",
    ):
        if getattr(config, key) <= 0:
            raise ConfigError(f"config key {key!r}: must be positive")
    if config.managed_containerd_memory_limit and not _GO_MEMORY_LIMIT.fullmatch(
        config.managed_containerd_memory_limit
    ):
        raise ConfigError(
            "config key 'managed_containerd_memory_limit': "
            f"{config.managed_containerd_memory_limit!r} is not a Go memory limit "
            "(a number of bytes with an optional B, KiB, MiB, GiB or TiB suffix)"
        )
    for host, mirrors in config.registry.mirrors.items():
        if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
            raise ConfigError(f"config key 'registry.mirrors.{host}': expected a list of URLs")
    if config.cgroup_driver not in CGROUP_DRIVERS:
        raise ConfigError(
            f"config key 'cgroup_driver': {config.cgroup_driver!r} is not supported: pycri "
            "manages pod cgroups with the cgroupfs driver only (run kubelet with "
            "--cgroup-driver=cgroupfs)"
        )
    if config.cni_conf_template and not Path(config.cni_conf_template).is_absolute():
        raise ConfigError(
            f"config key 'cni_conf_template': {config.cni_conf_template!r} must be absolute"
        )
    for name, handler in config.runtimes.items():
        _validate_handler(name, handler)
    if config.default_runtime_handler not in config.runtimes:
        raise ConfigError(
            f"config key 'default_runtime_handler': {config.default_runtime_handler!r} is not "
            f"a [runtimes.NAME] table (configured: {', '.join(sorted(config.runtimes))})"
        )
    return config


def _validate_handler(name: str, handler: RuntimeHandlerConfig) -> None:
    key = f"runtimes.{name}"
    if not name or "/" in name:
        raise ConfigError(f"config key {key!r}: a handler name must be non-empty, without '/'")
    if not handler.runtime_type.startswith("io.containerd.") or handler.runtime_type.count(".") < 3:
        raise ConfigError(
            f"config key '{key}.runtime_type': {handler.runtime_type!r} is not a containerd "
            "runtime type (io.containerd.NAME.VERSION)"
        )
    if handler.runtime_type not in RUNC_SHIM_TYPES:
        if handler.binary or handler.options:
            raise ConfigError(
                f"config key {key!r}: binary and options apply to the runc shim only "
                f"({', '.join(RUNC_SHIM_TYPES)}), not to {handler.runtime_type}"
            )
        return
    for option, value in handler.options.items():
        want = RUNC_OPTION_TYPES.get(option)
        if want is None:
            raise ConfigError(
                f"unknown config key '{key}.options.{option}' (runc shim options: "
                f"{', '.join(RUNC_OPTION_TYPES)}; the OCI binary is '{key}.binary')"
            )
        if type(value) is not want:
            raise ConfigError(
                f"config key '{key}.options.{option}': expected {want.__name__}, got {value!r}"
            )
    if handler.options.get("SystemdCgroup"):
        raise ConfigError(
            f"config key '{key}.options.SystemdCgroup': the systemd cgroup driver is not "
            "supported (cgroup_driver is cgroupfs)"
        )
    root = handler.options.get("Root", "")
    if root and not Path(root).is_absolute():
        raise ConfigError(f"config key '{key}.options.Root': {root!r} must be absolute")


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Load ``path`` (missing default file → defaults), then apply non-None ``overrides``."""
    config = Config()
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            if path != DEFAULT_CONFIG_PATH:
                raise ConfigError(f"config file {path} does not exist") from None
            data = {}
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path}: {err}") from None
        _apply(config, data, "")
    _apply(config, {k: v for k, v in (overrides or {}).items() if v is not None}, "")
    return validate(config)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _field_comments(cls: type) -> dict[str, str]:
    """The comment lines above each field of a config dataclass, by field name."""
    import inspect

    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("# "):
            pending.append(stripped)
        elif ":" in stripped and not stripped.startswith(("@", "def", "class", "return")):
            comments[stripped.split(":", 1)[0]] = "\n".join(pending)
            pending = []
        else:
            pending = []
    return comments


def default_toml() -> str:
    """The full default configuration as TOML, with the comments of the fields."""
    comments = _field_comments(Config)
    config = Config()
    lines = ["# pycri configuration (every key optional; these are the defaults)"]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) or f.name == "runtimes":
            continue
        if comments.get(f.name):
            lines.append(comments[f.name])
        lines.append(f"{f.name} = {_toml_value(value)}")
    lines += [
        "",
        "[registry]",
        '# mirrors = { "docker.io" = ["http://127.0.0.1:5000"] }',
        "insecure = []",
        "",
        "[registry.mirrors]",
        "",
        "[registry.ca_files]",
    ]
    handler_comments = _field_comments(RuntimeHandlerConfig)
    for name, handler in config.runtimes.items():
        lines += ["", comments["runtimes"], f"[runtimes.{name}]"]
        for f in dataclasses.fields(handler):
            if handler_comments.get(f.name):
                lines.append(handler_comments[f.name])
            lines.append(f"{f.name} = {_toml_value(getattr(handler, f.name))}")
    return "\n".join(lines) + "\n"
