"""Unit tests for the OCI spec builders: pure, no containerd, no runc."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from cri_api.v1 import api_pb2

from pycri.images.model import ImageConfig
from pycri.oci.capabilities import ALL_CAPABILITIES, DEFAULT_CAPABILITIES, capabilities_from_mask
from pycri.oci.common import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS
from pycri.oci.container_spec import container_spec
from pycri.oci.devices import OciDevice, device_from_host
from pycri.oci.host import HostFeatures, probe_host_features
from pycri.oci.process import DEFAULT_NOFILE_LIMIT, merge_env, process_args
from pycri.oci.resources import linux_resources_to_oci, with_linux_resources
from pycri.oci.sandbox_spec import SANDBOX_OOM_SCORE_ADJ, sandbox_spec
from pycri.oci.users import ProcessUser, resolve_user
from pycri.oci.validation import validate_log_path, validate_mount

NamespaceMode: TypeAlias = api_pb2.NamespaceMode.ValueType
MountPropagation: TypeAlias = api_pb2.MountPropagation.ValueType

SANDBOX_ID = "s" * 64
CONTAINER_ID = "c" * 64
SANDBOX_PID = 4242
ROOT = ProcessUser(uid=0, gid=0, additional_gids=(0,), username="root")

PAUSE_IMAGE = ImageConfig(entrypoint=("/pause",), user="65535:65535")
APP_IMAGE = ImageConfig(
    entrypoint=("/docker-entrypoint.sh",),
    cmd=("nginx", "-g", "daemon off;"),
    env=("PATH=/usr/local/bin:/usr/bin:/bin", "NGINX_VERSION=1.25"),
    working_dir="/srv",
)

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nginx:x:101:101:nginx user:/nonexistent:/bin/false
broken line
app:x:1000:1000::/home/app:/bin/sh
"""
GROUP = """\
root:x:0:
daemon:x:1:
wheel:x:10:root,app
nginx:x:101:
app:x:1000:
video:x:44:app,nginx
audio:x:29:app
"""


# ------------------------------------------------------------------------- helpers


def pod_config(
    *,
    network: NamespaceMode = api_pb2.POD,
    pid: NamespaceMode = api_pb2.POD,
    ipc: NamespaceMode = api_pb2.POD,
    privileged: bool = False,
    hostname: str = "web-0",
) -> api_pb2.PodSandboxConfig:
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web-0", uid="uid-1", namespace="default"),
        hostname=hostname,
        log_directory="/var/log/pods/default_web-0_uid-1",
        linux=api_pb2.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/pod-uid-1",
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=network, pid=pid, ipc=ipc),
                privileged=privileged,
            ),
        ),
    )


def container_config(**fields: Any) -> api_pb2.ContainerConfig:
    fields.setdefault("metadata", api_pb2.ContainerMetadata(name="nginx"))
    fields.setdefault("image", api_pb2.ImageSpec(image="docker.io/library/nginx:1.25"))
    return api_pb2.ContainerConfig(**fields)


def security(**fields: Any) -> api_pb2.LinuxContainerConfig:
    return api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(**fields)
    )


def build_sandbox(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "sandbox_id": SANDBOX_ID,
        "config": pod_config(),
        "image": PAUSE_IMAGE,
        "netns_path": "/var/run/netns/cni-1234",
        "hostname_path": "/run/pycri/sandboxes/s/hostname",
        "resolv_conf_path": "/run/pycri/sandboxes/s/resolv.conf",
        "hosts_path": "/run/pycri/sandboxes/s/hosts",
        "cgroups_path": "/kubepods/pod-uid-1/" + SANDBOX_ID,
        "current_oom_score_adj": 0,
    }
    arguments.update(overrides)
    spec: dict[str, Any] = sandbox_spec(**arguments)
    return spec


def fake_devices(host_path: str, container_path: str, permissions: str) -> list[OciDevice]:
    return [
        OciDevice(
            path=container_path,
            type="c",
            major=10,
            minor=200,
            file_mode=0o666,
            uid=0,
            gid=0,
            access=permissions or "rwm",
        )
    ]


def build_container(
    config: api_pb2.ContainerConfig | None = None, **overrides: Any
) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "container_id": CONTAINER_ID,
        "config": config if config is not None else container_config(),
        "sandbox_id": SANDBOX_ID,
        "sandbox_config": pod_config(),
        "sandbox_pid": SANDBOX_PID,
        "image": APP_IMAGE,
        "user": ROOT,
        "hostname_path": "/run/pycri/s/hostname",
        "resolv_conf_path": "/run/pycri/s/resolv.conf",
        "hosts_path": "/run/pycri/s/hosts",
        "cgroups_path": "/kubepods/pod-uid-1/" + CONTAINER_ID,
        "current_oom_score_adj": 0,
        "resolve_device": fake_devices,
    }
    arguments.update(overrides)
    spec: dict[str, Any] = container_spec(**arguments)
    return spec


def namespaces_of(spec: dict[str, Any]) -> dict[str, str | None]:
    return {ns["type"]: ns.get("path") for ns in spec["linux"]["namespaces"]}


def mount_at(spec: dict[str, Any], destination: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [m for m in spec["mounts"] if m["destination"] == destination]
    assert len(matches) == 1, f"expected one mount at {destination}: {matches}"
    return matches[0]


def destinations(spec: dict[str, Any]) -> list[str]:
    return [m["destination"] for m in spec["mounts"]]


def env_dict(spec: dict[str, Any]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in spec["process"]["env"])


# ------------------------------------------------------------------------- process args


@pytest.mark.parametrize(
    ("command", "args", "image", "expected"),
    [
        # neither: ENTRYPOINT + CMD
        ((), (), APP_IMAGE, ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]),
        # only args: ENTRYPOINT + args (CMD dropped)
        ((), ("nginx", "-t"), APP_IMAGE, ["/docker-entrypoint.sh", "nginx", "-t"]),
        # only command: command alone (ENTRYPOINT and CMD both dropped)
        (("/bin/sh",), (), APP_IMAGE, ["/bin/sh"]),
        # both
        (("/bin/sh", "-c"), ("echo hi",), APP_IMAGE, ["/bin/sh", "-c", "echo hi"]),
        # image with CMD only
        ((), (), ImageConfig(cmd=("/bin/sh",)), ["/bin/sh"]),
        ((), ("ls",), ImageConfig(cmd=("/bin/sh",)), ["ls"]),
        # ENTRYPOINT [""] clears the entrypoint
        ((), (), ImageConfig(entrypoint=("",), cmd=("/bin/true",)), ["/bin/true"]),
    ],
)
def test_process_args_follow_docker_rules(
    command: tuple[str, ...], args: tuple[str, ...], image: ImageConfig, expected: list[str]
) -> None:
    assert process_args(command=command, args=args, image=image) == expected


def test_process_args_without_any_command_is_refused() -> None:
    with pytest.raises(ValueError, match="no command"):
        process_args(command=(), args=(), image=ImageConfig())


def test_container_spec_uses_cri_command_and_args() -> None:
    spec = build_container(container_config(command=["/bin/sleep"], args=["3600"]))
    assert spec["process"]["args"] == ["/bin/sleep", "3600"]


# ------------------------------------------------------------------------- env


def test_merge_env_replaces_in_place_and_appends() -> None:
    assert merge_env(["A=1", "B=2"], ["B=3", "C=4"], ["A=5"]) == ["A=5", "B=3", "C=4"]


def test_container_env_layers_default_path_hostname_image_and_config() -> None:
    config = container_config(
        envs=[
            api_pb2.KeyValue(key="NGINX_VERSION", value="override"),
            api_pb2.KeyValue(key="EXTRA", value="a=b"),
        ]
    )
    spec = build_container(config)
    env = spec["process"]["env"]
    # image PATH replaces the default one, in its original (first) position
    assert env[0] == "PATH=/usr/local/bin:/usr/bin:/bin"
    assert env_dict(spec) == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOSTNAME": "web-0",
        "NGINX_VERSION": "override",
        "EXTRA": "a=b",
    }


def test_container_env_keeps_default_path_when_image_has_none() -> None:
    spec = build_container(image=ImageConfig(cmd=("/bin/sh",)))
    assert env_dict(spec)["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_config_can_override_hostname_env() -> None:
    spec = build_container(container_config(envs=[api_pb2.KeyValue(key="HOSTNAME", value="x")]))
    assert env_dict(spec)["HOSTNAME"] == "x"


def test_invalid_env_name_is_refused() -> None:
    with pytest.raises(ValueError, match="environment variable"):
        build_container(container_config(envs=[api_pb2.KeyValue(key="", value="x")]))


# ------------------------------------------------------------------------- cwd, tty, root


@pytest.mark.parametrize(
    ("config_dir", "image_dir", "expected"),
    [("/work", "/srv", "/work"), ("", "/srv", "/srv"), ("", "", "/"), ("", "app", "/app")],
)
def test_working_dir_precedence(config_dir: str, image_dir: str, expected: str) -> None:
    spec = build_container(
        container_config(working_dir=config_dir),
        image=ImageConfig(cmd=("/bin/sh",), working_dir=image_dir),
    )
    assert spec["process"]["cwd"] == expected


def test_relative_config_working_dir_is_refused() -> None:
    with pytest.raises(ValueError, match="working_dir"):
        build_container(container_config(working_dir="relative/dir"))


def test_terminal_follows_tty() -> None:
    assert build_container(container_config(tty=True))["process"]["terminal"] is True
    assert build_container(container_config())["process"]["terminal"] is False


def test_readonly_rootfs() -> None:
    assert build_container()["root"] == {"path": "rootfs", "readonly": False}
    spec = build_container(container_config(linux=security(readonly_rootfs=True)))
    assert spec["root"] == {"path": "rootfs", "readonly": True}


# ------------------------------------------------------------------------- namespaces


def test_container_joins_sandbox_namespaces_by_default() -> None:
    assert namespaces_of(build_container()) == {
        "mount": None,
        "network": f"/proc/{SANDBOX_PID}/ns/net",
        "uts": f"/proc/{SANDBOX_PID}/ns/uts",
        "ipc": f"/proc/{SANDBOX_PID}/ns/ipc",
        "pid": f"/proc/{SANDBOX_PID}/ns/pid",
    }


def pid_mode_config(mode: NamespaceMode) -> api_pb2.ContainerConfig:
    return container_config(
        linux=security(namespace_options=api_pb2.NamespaceOption(pid=mode)),
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (api_pb2.POD, f"/proc/{SANDBOX_PID}/ns/pid"),
        (api_pb2.CONTAINER, None),
        (api_pb2.TARGET, None),  # not supported: a new namespace, as CONTAINER
    ],
)
def test_container_pid_namespace_modes(mode: NamespaceMode, expected: str | None) -> None:
    namespaces = namespaces_of(build_container(pid_mode_config(mode)))
    assert "pid" in namespaces
    assert namespaces["pid"] == expected


def test_container_host_pid_has_no_pid_namespace() -> None:
    spec = build_container(
        pid_mode_config(api_pb2.NODE), sandbox_config=pod_config(pid=api_pb2.NODE)
    )
    assert "pid" not in namespaces_of(spec)


def test_container_pod_pid_in_host_pid_sandbox_shares_host() -> None:
    spec = build_container(
        pid_mode_config(api_pb2.POD), sandbox_config=pod_config(pid=api_pb2.NODE)
    )
    assert "pid" not in namespaces_of(spec)


def test_container_host_network_has_no_network_or_uts_namespace() -> None:
    namespaces = namespaces_of(build_container(sandbox_config=pod_config(network=api_pb2.NODE)))
    assert "network" not in namespaces
    assert "uts" not in namespaces
    assert namespaces["ipc"] == f"/proc/{SANDBOX_PID}/ns/ipc"
    assert "hostname" not in build_container()


def test_container_host_ipc_has_no_ipc_namespace_and_host_shm() -> None:
    spec = build_container(sandbox_config=pod_config(ipc=api_pb2.NODE))
    assert "ipc" not in namespaces_of(spec)
    assert mount_at(spec, "/dev/shm") == {
        "destination": "/dev/shm",
        "type": "bind",
        "source": "/dev/shm",
        "options": ["rbind", "rprivate", "rw"],
    }


def test_container_mount_namespace_is_always_new() -> None:
    for sandbox in (
        pod_config(),
        pod_config(network=api_pb2.NODE, pid=api_pb2.NODE, ipc=api_pb2.NODE),
    ):
        assert namespaces_of(build_container(sandbox_config=sandbox))["mount"] is None


def test_sandbox_namespaces_default() -> None:
    spec = build_sandbox()
    assert namespaces_of(spec) == {
        "mount": None,
        "pid": None,
        "ipc": None,
        "uts": None,
        "network": "/var/run/netns/cni-1234",
    }
    assert spec["hostname"] == "web-0"


def test_sandbox_without_netns_path_gets_a_new_network_namespace() -> None:
    assert namespaces_of(build_sandbox(netns_path=None))["network"] is None


def test_sandbox_host_network_has_no_network_uts_or_hostname() -> None:
    spec = build_sandbox(config=pod_config(network=api_pb2.NODE), netns_path=None)
    namespaces = namespaces_of(spec)
    assert "network" not in namespaces
    assert "uts" not in namespaces
    assert "hostname" not in spec


def test_sandbox_host_pid_and_ipc() -> None:
    spec = build_sandbox(config=pod_config(pid=api_pb2.NODE, ipc=api_pb2.NODE))
    namespaces = namespaces_of(spec)
    assert "pid" not in namespaces
    assert "ipc" not in namespaces
    assert mount_at(spec, "/dev/shm")["source"] == "/dev/shm"


@pytest.mark.parametrize("mode", [api_pb2.POD, api_pb2.CONTAINER])
def test_sandbox_pid_modes_other_than_node_get_a_new_namespace(mode: NamespaceMode) -> None:
    assert namespaces_of(build_sandbox(config=pod_config(pid=mode)))["pid"] is None


# ------------------------------------------------------------------------- sandbox details


def test_sandbox_spec_shape() -> None:
    config = pod_config()
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    spec = build_sandbox(config=config, current_oom_score_adj=-1000)
    assert json.loads(json.dumps(spec)) == spec  # plain JSON data
    assert spec["ociVersion"] == "1.0.2"
    assert spec["process"]["args"] == ["/pause"]
    assert spec["process"]["user"] == {"uid": 65535, "gid": 65535, "additionalGids": [65535]}
    assert spec["process"]["oomScoreAdj"] == SANDBOX_OOM_SCORE_ADJ
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod-uid-1/" + SANDBOX_ID
    assert spec["linux"]["sysctl"] == {
        "kernel.shm_rmid_forced": "1",
        "net.ipv4.ip_unprivileged_port_start": "0",
    }
    assert spec["linux"]["resources"]["cpu"] == {"shares": 2}
    assert spec["annotations"] == {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": SANDBOX_ID,
        "io.kubernetes.cri.sandbox-name": "web-0",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "uid-1",
        "io.kubernetes.cri.sandbox-log-directory": "/var/log/pods/default_web-0_uid-1",
    }
    assert mount_at(spec, "/etc/resolv.conf")["options"] == ["rbind", "ro"]
    assert "/etc/hostname" not in destinations(spec)
    assert "/sys/fs/cgroup" not in destinations(spec)


def test_sandbox_user_from_security_context() -> None:
    config = pod_config()
    context = config.linux.security_context
    context.run_as_user.value = 1000
    context.run_as_group.value = 3000
    context.supplemental_groups.extend([4000])
    spec = build_sandbox(config=config)
    assert spec["process"]["user"] == {"uid": 1000, "gid": 3000, "additionalGids": [3000, 4000]}


def test_sandbox_without_command_is_refused() -> None:
    with pytest.raises(ValueError, match="neither an entrypoint nor a command"):
        build_sandbox(image=ImageConfig())


def test_sandbox_oom_score_adj_is_clamped() -> None:
    assert build_sandbox(current_oom_score_adj=-500)["process"]["oomScoreAdj"] == -500
    assert build_sandbox(current_oom_score_adj=-999)["process"]["oomScoreAdj"] == -998


def test_sandbox_shm_path_is_mounted_read_only() -> None:
    spec = build_sandbox(shm_path="/run/pycri/sandboxes/s/shm")
    assert mount_at(spec, "/dev/shm") == {
        "destination": "/dev/shm",
        "type": "bind",
        "source": "/run/pycri/sandboxes/s/shm",
        "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
    }


# ------------------------------------------------------------------------- mounts


def test_container_standard_mounts() -> None:
    spec = build_container()
    assert destinations(spec)[:7] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert "ro" in mount_at(spec, "/sys")["options"]
    assert "ro" in mount_at(spec, "/sys/fs/cgroup")["options"]
    assert mount_at(spec, "/dev/shm")["type"] == "tmpfs"


def test_container_mounts_sandbox_files() -> None:
    spec = build_container()
    assert mount_at(spec, "/etc/hostname") == {
        "destination": "/etc/hostname",
        "type": "bind",
        "source": "/run/pycri/s/hostname",
        "options": ["rbind", "rprivate", "rw"],
    }
    assert mount_at(spec, "/etc/hosts")["source"] == "/run/pycri/s/hosts"
    assert mount_at(spec, "/etc/resolv.conf")["source"] == "/run/pycri/s/resolv.conf"


def test_sandbox_files_are_read_only_with_readonly_rootfs() -> None:
    spec = build_container(container_config(linux=security(readonly_rootfs=True)))
    for destination in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
        assert "ro" in mount_at(spec, destination)["options"]


def test_missing_sandbox_files_are_not_mounted() -> None:
    spec = build_container(hostname_path=None, hosts_path=None, resolv_conf_path=None)
    for destination in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
        assert destination not in destinations(spec)


def test_cri_mount_covering_sandbox_file_wins() -> None:
    config = container_config(
        mounts=[api_pb2.Mount(container_path="/etc/hosts", host_path="/var/lib/kubelet/pods/hosts")]
    )
    spec = build_container(config)
    assert mount_at(spec, "/etc/hosts")["source"] == "/var/lib/kubelet/pods/hosts"


@pytest.mark.parametrize(
    ("propagation", "option", "rootfs_propagation"),
    [
        (api_pb2.PROPAGATION_PRIVATE, "rprivate", None),
        (api_pb2.PROPAGATION_HOST_TO_CONTAINER, "rslave", "rslave"),
        (api_pb2.PROPAGATION_BIDIRECTIONAL, "rshared", "rshared"),
    ],
)
@pytest.mark.parametrize("readonly", [False, True])
def test_cri_mount_options(
    propagation: MountPropagation, option: str, rootfs_propagation: str | None, readonly: bool
) -> None:
    config = container_config(
        mounts=[
            api_pb2.Mount(
                container_path="/data/",
                host_path="/var/lib/data",
                readonly=readonly,
                propagation=propagation,
            )
        ]
    )
    spec = build_container(config)
    mount = mount_at(spec, "/data")
    assert mount["type"] == "bind"
    assert mount["source"] == "/var/lib/data"
    assert set(mount["options"]) == {"rbind", option, "ro" if readonly else "rw"}
    assert spec["linux"].get("rootfsPropagation") == rootfs_propagation


def test_rshared_wins_over_rslave_for_rootfs_propagation() -> None:
    config = container_config(
        mounts=[
            api_pb2.Mount(
                container_path="/a",
                host_path="/a",
                propagation=api_pb2.PROPAGATION_BIDIRECTIONAL,
            ),
            api_pb2.Mount(
                container_path="/b",
                host_path="/b",
                propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER,
            ),
        ]
    )
    assert build_container(config)["linux"]["rootfsPropagation"] == "rshared"


def test_cri_mounts_are_ordered_parents_first() -> None:
    config = container_config(
        mounts=[
            api_pb2.Mount(container_path="/data/cache/x", host_path="/h/x"),
            api_pb2.Mount(container_path="/data", host_path="/h/data"),
            api_pb2.Mount(container_path="/data/cache", host_path="/h/cache"),
        ]
    )
    order = [d for d in destinations(build_container(config)) if d.startswith("/data")]
    assert order == ["/data", "/data/cache", "/data/cache/x"]


def test_cri_mount_replaces_standard_mount() -> None:
    config = container_config(
        mounts=[api_pb2.Mount(container_path="/dev/shm", host_path="/run/shm-volume")]
    )
    spec = build_container(config, shm_path="/run/pycri/s/shm")
    assert mount_at(spec, "/dev/shm")["source"] == "/run/shm-volume"


def test_cri_dev_mount_replaces_everything_under_dev() -> None:
    config = container_config(mounts=[api_pb2.Mount(container_path="/dev", host_path="/dev")])
    spec = build_container(config)
    assert [d for d in destinations(spec) if d.startswith("/dev")] == ["/dev"]


def test_pod_shm_path_is_mounted_read_write() -> None:
    spec = build_container(shm_path="/run/pycri/s/shm")
    assert mount_at(spec, "/dev/shm") == {
        "destination": "/dev/shm",
        "type": "bind",
        "source": "/run/pycri/s/shm",
        "options": ["rbind", "rprivate", "rw"],
    }


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        (api_pb2.Mount(container_path="data", host_path="/h"), "container_path 'data' is not an"),
        (api_pb2.Mount(container_path="/data", host_path="h"), "host_path 'h' is not an absolute"),
        (api_pb2.Mount(container_path="", host_path="/h"), "container_path is empty"),
        (api_pb2.Mount(container_path="/data", host_path=""), "host_path is empty"),
        (api_pb2.Mount(container_path="/a/../etc", host_path="/h"), "must not contain '..'"),
        (api_pb2.Mount(container_path="/a", host_path="/var/../etc"), "must not contain '..'"),
        (
            api_pb2.Mount(container_path="/a", host_path="/h", recursive_read_only=True),
            "recursive read-only",
        ),
        (
            api_pb2.Mount(
                container_path="/a", host_path="/h", image=api_pb2.ImageSpec(image="busybox")
            ),
            "image volumes",
        ),
    ],
)
def test_invalid_mounts_are_refused(mount: api_pb2.Mount, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_mount(mount)
    with pytest.raises(ValueError, match=message):
        build_container(container_config(mounts=[mount]))


def test_valid_mount_passes_validation() -> None:
    validate_mount(api_pb2.Mount(container_path="/data..x", host_path="/var/lib/..hidden"))


@pytest.mark.parametrize("log_path", ["nginx/0.log", "0.log", "", "a..b/0.log"])
def test_valid_log_paths(log_path: str) -> None:
    validate_log_path(log_path)


@pytest.mark.parametrize(
    ("log_path", "message"),
    [
        ("/var/log/pods/x/0.log", "must be relative"),
        ("../other-pod/0.log", "must not contain '..'"),
        ("nginx/../../0.log", "must not contain '..'"),
    ],
)
def test_invalid_log_paths(log_path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_log_path(log_path)


def test_privileged_container_in_unprivileged_sandbox_is_refused() -> None:
    with pytest.raises(ValueError, match="privileged"):
        build_container(container_config(linux=security(privileged=True)))


# ------------------------------------------------------------------------- devices


def test_devices_are_added_with_cgroup_rules() -> None:
    config = container_config(
        devices=[
            api_pb2.Device(
                container_path="/dev/net/tun", host_path="/dev/net/tun", permissions="rw"
            )
        ]
    )
    spec = build_container(config)
    assert spec["linux"]["devices"] == [
        {
            "path": "/dev/net/tun",
            "type": "c",
            "major": 10,
            "minor": 200,
            "fileMode": 0o666,
            "uid": 0,
            "gid": 0,
        }
    ]
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rw"},
    ]


def test_no_devices_means_deny_all() -> None:
    spec = build_container()
    assert "devices" not in spec["linux"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


@pytest.mark.parametrize(
    "device",
    [
        api_pb2.Device(container_path="dev/x", host_path="/dev/null"),
        api_pb2.Device(container_path="/dev/x", host_path="/dev/../etc/passwd"),
        api_pb2.Device(container_path="/dev/x", host_path="/dev/null", permissions="rwx"),
    ],
)
def test_invalid_devices_are_refused(device: api_pb2.Device) -> None:
    with pytest.raises(ValueError, match="device"):
        build_container(container_config(devices=[device]))


def test_device_from_host_reads_a_real_character_device() -> None:
    info = os.stat("/dev/null")
    assert device_from_host("/dev/null", "/dev/mynull", "") == [
        OciDevice(
            path="/dev/mynull",
            type="c",
            major=1,
            minor=3,
            file_mode=stat.S_IMODE(info.st_mode),
            uid=info.st_uid,
            gid=info.st_gid,
            access="rwm",
        )
    ]


def test_device_from_host_refuses_a_regular_file(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(ValueError, match="not a device"):
        device_from_host(str(regular), "/dev/x", "rwm")


def test_device_from_host_walks_a_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "null").symlink_to("/dev/null")
    (tmp_path / "sub" / "zero").symlink_to("/dev/zero")
    (tmp_path / "plain").write_text("not a device")
    found = device_from_host(str(tmp_path), "/dev/things", "r")
    assert sorted((d.path, d.major, d.minor, d.access) for d in found) == [
        ("/dev/things/null", 1, 3, "r"),
        ("/dev/things/sub/zero", 1, 5, "r"),
    ]


# ------------------------------------------------------------------------- capabilities


def caps_of(spec: dict[str, Any]) -> set[str]:
    capabilities = spec["process"]["capabilities"]
    assert capabilities["bounding"] == capabilities["effective"] == capabilities["permitted"]
    return set(capabilities["bounding"])


def caps_config(
    add: list[str] | None = None, drop: list[str] | None = None
) -> api_pb2.ContainerConfig:
    return container_config(
        linux=security(
            capabilities=api_pb2.Capability(
                add_capabilities=add or [], drop_capabilities=drop or []
            )
        )
    )


def test_default_capabilities() -> None:
    spec = build_container()
    assert caps_of(spec) == set(DEFAULT_CAPABILITIES)
    assert "ambient" not in spec["process"]["capabilities"]
    assert "inheritable" not in spec["process"]["capabilities"]


def test_add_and_drop_with_and_without_prefix() -> None:
    spec = build_container(
        caps_config(add=["NET_ADMIN", "cap_sys_time"], drop=["CAP_NET_RAW", "kill"])
    )
    assert caps_of(spec) == (set(DEFAULT_CAPABILITIES) | {"CAP_NET_ADMIN", "CAP_SYS_TIME"}) - {
        "CAP_NET_RAW",
        "CAP_KILL",
    }


def test_capabilities_are_in_kernel_order() -> None:
    bounding = build_container(caps_config(add=["SYS_ADMIN"]))["process"]["capabilities"][
        "bounding"
    ]
    assert bounding == [c for c in ALL_CAPABILITIES if c in set(bounding)]


def test_add_all_then_drop_one() -> None:
    spec = build_container(caps_config(add=["ALL"], drop=["CHOWN"]))
    assert caps_of(spec) == set(ALL_CAPABILITIES) - {"CAP_CHOWN"}


def test_drop_all_then_add_one() -> None:
    spec = build_container(caps_config(add=["NET_BIND_SERVICE"], drop=["ALL"]))
    assert caps_of(spec) == {"CAP_NET_BIND_SERVICE"}


def test_drop_all() -> None:
    assert caps_of(build_container(caps_config(drop=["all"]))) == set()


def test_add_all_is_limited_to_the_host_bounding_set() -> None:
    host = HostFeatures(available_capabilities=frozenset(ALL_CAPABILITIES) - {"CAP_SYS_RESOURCE"})
    spec = build_container(caps_config(add=["ALL"]), host=host)
    assert caps_of(spec) == set(ALL_CAPABILITIES) - {"CAP_SYS_RESOURCE"}


def test_adding_a_capability_the_host_lacks_is_refused() -> None:
    host = HostFeatures(available_capabilities=frozenset(ALL_CAPABILITIES) - {"CAP_SYS_RESOURCE"})
    with pytest.raises(ValueError, match="CAP_SYS_RESOURCE is not in the runtime's bounding set"):
        build_container(caps_config(add=["SYS_RESOURCE"]), host=host)


def test_unknown_capability_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown capability 'FLY'"):
        build_container(caps_config(add=["FLY"]))


def test_ambient_capabilities() -> None:
    config = container_config(
        linux=security(capabilities=api_pb2.Capability(add_ambient_capabilities=["NET_ADMIN"]))
    )
    capabilities = build_container(config)["process"]["capabilities"]
    assert capabilities["ambient"] == capabilities["inheritable"] == ["CAP_NET_ADMIN"]
    assert "CAP_NET_ADMIN" in capabilities["permitted"]


def privileged_spec(**overrides: Any) -> dict[str, Any]:
    config = container_config(
        linux=security(
            privileged=True,
            capabilities=api_pb2.Capability(drop_capabilities=["ALL"]),
            masked_paths=["/proc/kcore"],
        )
    )
    return build_container(config, sandbox_config=pod_config(privileged=True), **overrides)


def test_privileged_gets_all_caps_and_no_masks() -> None:
    spec = privileged_spec()
    assert caps_of(spec) == set(ALL_CAPABILITIES)
    assert spec["linux"]["maskedPaths"] == []
    assert spec["linux"]["readonlyPaths"] == []
    assert "rw" in mount_at(spec, "/sys")["options"]
    assert "rw" in mount_at(spec, "/sys/fs/cgroup")["options"]
    assert spec["linux"]["resources"]["devices"][0] == {"allow": True, "access": "rwm"}


def test_privileged_caps_respect_host_bounding_set() -> None:
    host = HostFeatures(available_capabilities=frozenset(DEFAULT_CAPABILITIES))
    assert caps_of(privileged_spec(host=host)) == set(DEFAULT_CAPABILITIES)


# ------------------------------------------------------------------------- masked / readonly paths


def test_default_masked_and_readonly_paths() -> None:
    spec = build_container()
    assert spec["linux"]["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)


def test_cri_masked_and_readonly_paths() -> None:
    config = container_config(
        linux=security(masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"])
    )
    spec = build_container(config)
    assert spec["linux"]["maskedPaths"] == ["/proc/kcore"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/sys"]


# ------------------------------------------------------------------------- process security


def test_no_new_privileges() -> None:
    assert build_container()["process"]["noNewPrivileges"] is False
    spec = build_container(container_config(linux=security(no_new_privs=True)))
    assert spec["process"]["noNewPrivileges"] is True


def test_user_is_written_to_the_spec() -> None:
    user = ProcessUser(uid=1000, gid=1000, additional_gids=(1000, 10, 44), username="app")
    spec = build_container(user=user)
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [1000, 10, 44]}


def test_user_without_additional_gids_omits_the_field() -> None:
    spec = build_container(user=ProcessUser(uid=5, gid=6))
    assert spec["process"]["user"] == {"uid": 5, "gid": 6}


def test_rlimit_nofile_default_and_clamped() -> None:
    assert build_container()["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": DEFAULT_NOFILE_LIMIT, "soft": DEFAULT_NOFILE_LIMIT}
    ]
    spec = build_container(host=HostFeatures(nofile_hard_limit=20000))
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 20000, "soft": 20000}]
    sandbox = build_sandbox(host=HostFeatures(nofile_hard_limit=20000))
    assert sandbox["process"]["rlimits"][0]["hard"] == 20000


# ------------------------------------------------------------------------- oom_score_adj


@pytest.mark.parametrize(
    ("requested", "current", "expected"),
    [
        (0, 0, 0),
        (-997, 0, 0),  # never below ours: lowering needs CAP_SYS_RESOURCE
        (-997, -999, -997),
        (1000, -500, 1000),
        (500, 600, 600),
    ],
)
def test_oom_score_adj_is_clamped_up(requested: int, current: int, expected: int) -> None:
    config = container_config(
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(oom_score_adj=requested)
        )
    )
    spec = build_container(config, current_oom_score_adj=current)
    assert spec["process"]["oomScoreAdj"] == expected


# ------------------------------------------------------------------------- resources


FULL_RESOURCES = api_pb2.LinuxContainerResources(
    cpu_period=100000,
    cpu_quota=50000,
    cpu_shares=512,
    cpuset_cpus="0-1",
    cpuset_mems="0",
    memory_limit_in_bytes=256 * 2**20,
    oom_score_adj=100,
    hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=0)],
    unified={"memory.high": "200000000"},
)


def test_linux_resources_to_oci_full() -> None:
    assert linux_resources_to_oci(FULL_RESOURCES) == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
        "memory": {"limit": 256 * 2**20, "swap": 256 * 2**20},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "unified": {"memory.high": "200000000"},
    }


def test_linux_resources_to_oci_empty() -> None:
    assert linux_resources_to_oci(api_pb2.LinuxContainerResources()) == {}


def test_explicit_swap_limit() -> None:
    resources = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300
    )
    assert linux_resources_to_oci(resources)["memory"] == {"limit": 100, "swap": 300}


def test_host_without_swap_accounting_or_hugetlb() -> None:
    host = HostFeatures(swap_limit_supported=False, hugetlb_supported=False)
    result = linux_resources_to_oci(FULL_RESOURCES, host=host)
    assert result["memory"] == {"limit": 256 * 2**20}
    assert "hugepageLimits" not in result


def test_container_spec_resources_and_cgroups_path() -> None:
    config = container_config(linux=api_pb2.LinuxContainerConfig(resources=FULL_RESOURCES))
    spec = build_container(config)
    resources = spec["linux"]["resources"]
    assert resources["cpu"]["quota"] == 50000
    assert resources["memory"]["limit"] == 256 * 2**20
    assert resources["devices"] == [{"allow": False, "access": "rwm"}]
    assert spec["process"]["oomScoreAdj"] == 100
    assert spec["linux"]["cgroupsPath"] == "/kubepods/pod-uid-1/" + CONTAINER_ID


def test_with_linux_resources_overlays_and_keeps_devices() -> None:
    config = container_config(linux=api_pb2.LinuxContainerConfig(resources=FULL_RESOURCES))
    spec = build_container(config)
    update = api_pb2.LinuxContainerResources(cpu_quota=20000, memory_limit_in_bytes=128 * 2**20)
    updated = with_linux_resources(spec, update)
    resources = updated["linux"]["resources"]
    assert resources["cpu"] == {
        "shares": 512,
        "quota": 20000,
        "period": 100000,
        "cpus": "0-1",
        "mems": "0",
    }
    assert resources["memory"] == {"limit": 128 * 2**20, "swap": 128 * 2**20}
    assert resources["devices"] == spec["linux"]["resources"]["devices"]
    # the original is untouched
    assert spec["linux"]["resources"]["cpu"]["quota"] == 50000


# ------------------------------------------------------------------------- annotations


def test_container_annotations() -> None:
    config = container_config(
        annotations={"team": "web", "io.kubernetes.cri.container-type": "sandbox"}
    )
    assert build_container(config)["annotations"] == {
        "team": "web",
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "nginx",
        "io.kubernetes.cri.sandbox-id": SANDBOX_ID,
        "io.kubernetes.cri.sandbox-name": "web-0",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "uid-1",
        "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.25",
    }


def test_image_name_annotation_prefers_explicit_then_user_specified() -> None:
    config = container_config(
        image=api_pb2.ImageSpec(image="sha256:abc", user_specified_image="nginx:1.25")
    )
    assert build_container(config)["annotations"]["io.kubernetes.cri.image-name"] == "nginx:1.25"
    spec = build_container(config, image_name="docker.io/library/nginx:1.25")
    assert spec["annotations"]["io.kubernetes.cri.image-name"] == "docker.io/library/nginx:1.25"


def test_container_spec_is_json_and_has_no_hostname() -> None:
    spec = build_container()
    assert json.loads(json.dumps(spec)) == spec
    assert spec["ociVersion"] == "1.0.2"
    assert "hostname" not in spec
    assert "sysctl" not in spec["linux"]


# ------------------------------------------------------------------------- resolve_user


def resolve(**overrides: Any) -> ProcessUser:
    arguments: dict[str, Any] = {
        "image_user": "",
        "run_as_user": None,
        "run_as_username": "",
        "run_as_group": None,
        "supplemental_groups": (),
        "passwd": PASSWD,
        "group": GROUP,
    }
    arguments.update(overrides)
    return resolve_user(**arguments)


def test_no_user_anywhere_is_root() -> None:
    assert resolve() == ProcessUser(uid=0, gid=0, additional_gids=(0, 10), username="root")


def test_no_user_and_no_passwd_is_anonymous_root() -> None:
    assert resolve(passwd="", group="") == ProcessUser(uid=0, gid=0, additional_gids=(0,))


@pytest.mark.parametrize(
    ("image_user", "expected"),
    [
        ("101", ProcessUser(uid=101, gid=101, additional_gids=(101, 44), username="nginx")),
        ("nginx", ProcessUser(uid=101, gid=101, additional_gids=(101, 44), username="nginx")),
        ("1000:44", ProcessUser(uid=1000, gid=44, additional_gids=(44, 10, 29), username="app")),
        ("app:video", ProcessUser(uid=1000, gid=44, additional_gids=(44, 10, 29), username="app")),
        ("app:5", ProcessUser(uid=1000, gid=5, additional_gids=(5, 10, 44, 29), username="app")),
        # a uid not in passwd runs with gid 0 and no groups from the group file
        ("4321", ProcessUser(uid=4321, gid=0, additional_gids=(0,))),
        ("4321:4321", ProcessUser(uid=4321, gid=4321, additional_gids=(4321,))),
        (":44", ProcessUser(uid=0, gid=44, additional_gids=(44, 10), username="root")),
    ],
)
def test_image_user_forms(image_user: str, expected: ProcessUser) -> None:
    assert resolve(image_user=image_user) == expected


def test_run_as_user_overrides_image_user_and_its_group() -> None:
    user = resolve(image_user="nginx:video", run_as_user=1000)
    assert user == ProcessUser(
        uid=1000, gid=1000, additional_gids=(1000, 10, 44, 29), username="app"
    )


def test_run_as_username() -> None:
    user = resolve(image_user="101", run_as_username="app", run_as_group=3000)
    assert user == ProcessUser(
        uid=1000, gid=3000, additional_gids=(3000, 10, 44, 29), username="app"
    )


def test_run_as_user_and_group_and_supplemental_groups() -> None:
    user = resolve(run_as_user=1000, run_as_group=2000, supplemental_groups=[44, 5000, 2000])
    assert user.uid == 1000
    assert user.gid == 2000
    assert user.additional_gids == (2000, 10, 44, 29, 5000)


def test_strict_supplemental_groups_ignores_group_file() -> None:
    user = resolve(run_as_user=1000, supplemental_groups=[5000], strict_supplemental_groups=True)
    assert user.additional_gids == (1000, 5000)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_user": "ghost"}, "user 'ghost' not found in the image's /etc/passwd"),
        ({"run_as_username": "ghost"}, "user 'ghost' not found"),
        ({"image_user": "app:ghosts"}, "group 'ghosts' not found in the image's /etc/group"),
        ({"run_as_group": 5}, "run_as_group is set without run_as_user"),
        ({"run_as_user": 1, "run_as_username": "app"}, "mutually exclusive"),
        ({"run_as_user": -1}, "out of range"),
        ({"run_as_user": 2**32}, "out of range"),
        ({"run_as_user": 0, "supplemental_groups": [-5]}, "out of range"),
    ],
)
def test_resolve_user_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve(**overrides)


def test_passwd_parsing_tolerates_junk() -> None:
    passwd = "\n\n# c\n+nis\nbad:x:notanumber:0\nok:x:7:8::/:/bin/sh\n"
    assert resolve(image_user="ok", passwd=passwd, group="") == ProcessUser(
        uid=7, gid=8, additional_gids=(8,), username="ok"
    )


# ------------------------------------------------------------------------- host features


def test_capabilities_from_mask() -> None:
    assert capabilities_from_mask(0) == frozenset()
    assert capabilities_from_mask(0b1) == {"CAP_CHOWN"}
    # the mask of this VM: everything up to CAP_CHECKPOINT_RESTORE except CAP_SYS_RESOURCE (24)
    assert capabilities_from_mask(0x1FFFEFFFFFF) == frozenset(ALL_CAPABILITIES) - {
        "CAP_SYS_RESOURCE"
    }


def test_probe_host_features_reads_this_process(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.memsw.limit_in_bytes").write_text("0")
    features = probe_host_features(cgroup_root=str(tmp_path))
    assert features.swap_limit_supported is True
    assert features.hugetlb_supported is False
    assert features.available_capabilities <= frozenset(ALL_CAPABILITIES)


# ------------------------------------------------------------------------- security profiles


def test_security_profiles_land_where_runc_reads_them() -> None:
    seccomp = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
    spec = build_container(seccomp=seccomp, apparmor_profile="pycri-default")
    assert spec["linux"]["seccomp"] == seccomp
    assert spec["process"]["apparmorProfile"] == "pycri-default"
    plain = build_container()
    assert "seccomp" not in plain["linux"] and "apparmorProfile" not in plain["process"]
    assert build_sandbox(seccomp=seccomp)["linux"]["seccomp"] == seccomp
    assert "seccomp" not in build_sandbox()["linux"]


def test_the_capabilities_seccomp_is_built_for_are_the_specs() -> None:
    from pycri.oci.capabilities import container_capabilities, sandbox_capabilities

    config = container_config()
    config.linux.security_context.capabilities.add_capabilities.append("SYS_ADMIN")
    spec = build_container(config)
    caps = container_capabilities(
        config.linux.security_context, available=HostFeatures().available_capabilities
    )
    assert caps == spec["process"]["capabilities"]
    sandbox = build_sandbox()
    bounding = sandbox["process"]["capabilities"]["bounding"]
    assert bounding == sandbox_capabilities(HostFeatures().available_capabilities)
