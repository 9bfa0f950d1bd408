"""pycri's configuration: a TOML file, every key optional, overridden by command-line flags.

Unknown keys and values of the wrong type are refused at start with a message that names the
key, so a typo never silently falls back to a default. ``pycri config default`` prints the
full default configuration (``default_toml``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/pycri/config.toml")


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
    # image of the pod sandbox (pause) container
    sandbox_image: str = "registry.k8s.io/pause:3.9"
    # containerd runtime for tasks
    runtime: str = "io.containerd.runc.v2"
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
    # seccomp profile of containers and pods that ask for none (runtime/default, unconfined,
    # localhost/<absolute path>); empty: no filter, as the CRI says
    seccomp_unset_profile: str = ""
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    @property
    def managed_containerd(self) -> bool:
        return not self.containerd_address

    @property
    def containerd_socket(self) -> str:
        """The socket pycri talks to: the given one, or its managed containerd's."""
        return self.containerd_address or str(Path(self.state) / "containerd" / "containerd.sock")


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


def _apply(target: Any, data: dict[str, Any], prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {name!r}")
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
    if not 0 <= config.stream_port <= 65535:
        raise ConfigError(f"config key 'stream_port': {config.stream_port} is not a port")
    if bool(config.stream_tls_cert_file) != bool(config.stream_tls_key_file):
        raise ConfigError(
            "config keys 'stream_tls_cert_file' and 'stream_tls_key_file' go together"
        )
    for key in ("stream_idle_timeout", "stream_max_concurrent"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"config key {key!r}: must be positive")
    for host, mirrors in config.registry.mirrors.items():
        if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
            raise ConfigError(f"config key 'registry.mirrors.{host}': expected a list of URLs")
    return config


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
    raise TypeError(value)


def default_toml() -> str:
    """The full default configuration as TOML, with the comments of the fields."""
    import inspect

    source = inspect.getsource(Config)
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("# "):
            pending.append(stripped)
        elif ":" in stripped and not stripped.startswith(("@", "def", "class", "return")):
            comments[stripped.split(":", 1)[0]] = "\n".join(pending)
            pending = []
        else:
            pending = []
    config = Config()
    lines = ["# pycri configuration (every key optional; these are the defaults)"]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
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
    return "\n".join(lines) + "\n"
