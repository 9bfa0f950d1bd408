from __future__ import annotations

from pathlib import Path

import pytest

from pycri.config import Config, ConfigError, default_toml, load


def test_defaults_without_file() -> None:
    assert load(None) == Config()


def test_file_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'socket = "/run/x.sock"\nlog_level = "debug"\n[registry]\ninsecure = ["a:5000"]\n'
    )
    config = load(cfg, {"socket": "/run/y.sock", "root": None})
    assert config.socket == "/run/y.sock"
    assert config.log_level == "debug"
    assert config.registry.insecure == ["a:5000"]
    assert config.root == Config().root


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope = 1", "unknown config key 'nope'"),
        ("stream_port = 'x'", "'stream_port': expected an integer"),
        ("stream_port = 99999", "'stream_port'"),
        ("cni_bin_dirs = [1]", "'cni_bin_dirs': expected a list of strings"),
        ("root = 'relative'", "'root'"),
        ("[registry]\nmirrors = { 'docker.io' = 'x' }", "registry.mirrors.docker.io"),
        ("registry = 3", "'registry': expected a table"),
        ("socket = [", "config file"),
        ("cgroup_parent = 'relative'", "'cgroup_parent'"),
        ("cgroup_parent = '/a/../b'", "'cgroup_parent'"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load(cfg)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")


def test_default_toml_loads_to_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(default_toml())
    assert load(cfg) == Config()
    assert "# CRI socket" in default_toml()


def test_managed_containerd_socket() -> None:
    config = Config(state="/run/p")
    assert config.managed_containerd
    assert config.containerd_socket == "/run/p/containerd/containerd.sock"
    assert Config(containerd_address="/x.sock").containerd_socket == "/x.sock"


def test_managed_containerd_plugins_and_go_limits() -> None:
    from pycri.config import UNUSED_CONTAINERD_PLUGINS, validate
    from pycri.containerd.supervisor import CRI_PLUGIN, disabled_plugins, go_environment

    native = disabled_plugins(unused=UNUSED_CONTAINERD_PLUGINS, snapshotter="native")
    assert native[0] == CRI_PLUGIN and "io.containerd.snapshotter.v1.native" not in native
    assert "io.containerd.snapshotter.v1.overlayfs" not in native
    assert disabled_plugins(unused=[], snapshotter="overlayfs") == [CRI_PLUGIN]  # CRI always off
    assert go_environment(memory_limit="", gogc=0) == {}
    assert go_environment(memory_limit="64MiB", gogc=-1) == {"GOMEMLIMIT": "64MiB", "GOGC": "off"}
    with pytest.raises(ConfigError, match="managed_containerd_memory_limit"):
        validate(Config(managed_containerd_memory_limit="64 megs"))
