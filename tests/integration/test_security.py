"""Issue 14: seccomp (RuntimeDefault, Localhost, Unconfined) and AppArmor on real containers.

What a container's own process sees is read from its log (the init process's /proc/self), so
the checks hold where execs see the host's /proc (the fresh-chroot quirk); execs are used
only for behaviour (a blocked call failing)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from pycri.containerd.client import ContainerdClient
from pycri.security.apparmor import probe_apparmor
from tests.integration.helpers import CRI, Daemon, eventually, leftovers
from tests.integration.pods import (
    container_config,
    pod_config,
    running_pod,
    start,
    status,
    wait_exited,
)

RUNTIME_DEFAULT = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
UNCONFINED = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)
Pod = tuple[str, api_pb2.PodSandboxConfig]


def localhost(path: Path | str) -> api_pb2.SecurityProfile:
    return api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=str(path)
    )


def with_seccomp(
    config: api_pb2.ContainerConfig,
    profile: api_pb2.SecurityProfile | None = None,
    **fields: object,
) -> api_pb2.ContainerConfig:
    security = config.linux.security_context
    if profile is not None:
        security.seccomp.CopyFrom(profile)
    for name, value in fields.items():
        if name == "add_capabilities":
            security.capabilities.add_capabilities.extend(value)  # type: ignore[arg-type]
        else:
            setattr(security, name, value)
    return config


async def log_text(cri: CRI, cid: str) -> str:
    return Path((await status(cri, cid)).log_path).read_text()


def status_field(log: str, name: str) -> str:
    match = re.search(rf"{name}:\s*(\S+)", log)
    assert match, f"{name} not in {log!r}"
    return match.group(1)


async def exec_result(cri: CRI, cid: str, script: str) -> api_pb2.ExecSyncResponse:
    return await cri.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=20)
    )


REPORT = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; sleep 3600"


async def test_runtime_default_filters_and_blocks_what_it_should(cri: CRI, pod: Pod) -> None:
    pod_id, pod_cfg = pod
    # no_new_privs off and no CAP_SYS_ADMIN (the CRI defaults): runc still installs the filter
    confined = await start(
        cri, pod_id, pod_cfg, with_seccomp(container_config("confined", REPORT), RUNTIME_DEFAULT)
    )
    free = await start(
        cri, pod_id, pod_cfg, with_seccomp(container_config("free", REPORT), UNCONFINED)
    )

    async def reported() -> bool:
        return "NoNewPrivs" in await log_text(cri, confined) and "Seccomp" in await log_text(
            cri, free
        )

    await eventually(reported, timeout=15)
    assert status_field(await log_text(cri, confined), "Seccomp") == "2"
    assert status_field(await log_text(cri, confined), "NoNewPrivs") == "0"
    assert status_field(await log_text(cri, free), "Seccomp") == "0"
    blocked = await exec_result(cri, confined, "unshare -U true")
    assert blocked.exit_code != 0 and b"Operation not permitted" in blocked.stderr
    allowed = await exec_result(cri, free, "unshare -U true")
    assert allowed.exit_code == 0, allowed.stderr


async def test_runtime_default_breaks_nothing_ordinary(cri: CRI, pod: Pod) -> None:
    pod_id, pod_cfg = pod
    script = (
        "mkdir -p /tmp/www && echo served > /tmp/www/index.html && "
        "httpd -p 127.0.0.1:8080 -h /tmp/www && sleep 3600"
    )
    cid = await start(
        cri, pod_id, pod_cfg, with_seccomp(container_config("web", script), RUNTIME_DEFAULT)
    )
    work = (
        "set -e; ps >/dev/null; ls -l / >/dev/null; date >/dev/null; "
        "touch /tmp/f && chmod 600 /tmp/f && ln -s /tmp/f /tmp/l && cat /tmp/l; "
        "echo ping | nc -l -p 9090 >/tmp/got & sleep 0.3; echo hi | nc -w 1 127.0.0.1 9090 || true; "
        "for i in 1 2 3 4 5 6 7 8 9 10; do "
        "wget -q -O - http://127.0.0.1:8080/ && break; sleep 0.3; done"
    )
    result = await exec_result(cri, cid, work)
    assert result.exit_code == 0, result.stderr
    assert b"served" in result.stdout


async def test_localhost_profiles_block_what_they_name(cri: CRI, pod: Pod, tmp_path: Path) -> None:
    pod_id, pod_cfg = pod
    no_chmod = tmp_path / "no-chmod.json"
    no_chmod.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["chmod", "fchmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}
                ],
            }
        )
    )
    no_hostname = tmp_path / "no-hostname.json"
    no_hostname.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}],
            }
        )
    )
    chmod_c = await start(
        cri, pod_id, pod_cfg, with_seccomp(container_config("nochmod", REPORT), localhost(no_chmod))
    )
    result = await exec_result(cri, chmod_c, "touch /tmp/x && chmod 400 /tmp/x")
    assert result.exit_code != 0 and b"Operation not permitted" in result.stderr
    # the deprecated field, with CAP_SYS_ADMIN: the profile still forbids sethostname (the
    # container's own process tries, so its own busybox answers, where execs may not be)
    rename = "hostname renamed; echo rc=$?; hostname; sleep 3600"
    config = with_seccomp(
        container_config("nohost", rename),
        seccomp_profile_path=f"localhost/{no_hostname}",
        add_capabilities=["SYS_ADMIN"],
    )
    pod_host = pod_config("hostname-pod", log_dir=tmp_path / "logs")  # its own UTS namespace
    async with running_pod(cri, pod_host) as host_pod:
        blocked_c = await start(cri, host_pod, pod_host, config)
        fine = with_seccomp(
            container_config("mayrename", rename), RUNTIME_DEFAULT, add_capabilities=["SYS_ADMIN"]
        )
        allowed_c = await start(cri, host_pod, pod_host, fine)

        async def both_tried() -> bool:
            logs = [await log_text(cri, c) for c in (blocked_c, allowed_c)]
            return all("rc=" in log for log in logs)

        await eventually(both_tried, timeout=15)
        blocked = await log_text(cri, blocked_c)
        assert "Operation not permitted" in blocked and "rc=1" in blocked, blocked
        allowed = await log_text(cri, allowed_c)
        assert "rc=0" in allowed and "stdout F renamed" in allowed, allowed


async def _refused(cri: CRI, pod: Pod, config: api_pb2.ContainerConfig) -> str:
    pod_id, pod_cfg = pod
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod_cfg
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details() or ""


async def test_bad_profiles_are_refused_and_leave_nothing(
    cri: CRI, pod: Pod, tmp_path: Path, daemon: Daemon, ctd: ContainerdClient
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    missing = tmp_path / "missing.json"
    cases = [
        (
            with_seccomp(container_config("a", "true"), seccomp_profile_path=str(broken)),
            "localhost/",
        ),
        (with_seccomp(container_config("b", "true"), localhost(missing)), str(missing)),
        (with_seccomp(container_config("c", "true"), localhost("relative.json")), "relative.json"),
        (with_seccomp(container_config("d", "true"), localhost(broken)), str(broken)),
    ]
    before = await leftovers(daemon, ctd)
    for config, named in cases:
        assert named in await _refused(cri, pod, config)
    assert await leftovers(daemon, ctd) == before
    listed = await cri.runtime.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod[0]))
    )
    assert list(listed.containers) == []


async def test_the_sandbox_gets_its_profile_and_privileged_runs_unfiltered(
    cri: CRI, images_loaded: None, tmp_path: Path
) -> None:
    confined = pod_config("seccomp-pod", log_dir=tmp_path)
    confined.linux.security_context.seccomp.CopyFrom(RUNTIME_DEFAULT)
    async with running_pod(cri, confined) as pod_id:
        info = await cri.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        )
        pid = json.loads(info.info["info"])["pid"]
        assert status_field(Path(f"/proc/{pid}/status").read_text(), "Seccomp") == "2"
    privileged_pod = pod_config("privileged-pod", log_dir=tmp_path)
    privileged_pod.linux.security_context.privileged = True
    async with running_pod(cri, privileged_pod) as pod_id:
        config = with_seccomp(
            container_config("priv", "grep Seccomp: /proc/self/status"),
            RUNTIME_DEFAULT,
            privileged=True,
        )
        cid = await start(cri, pod_id, privileged_pod, config)
        await wait_exited(cri, cid)
        assert status_field(await log_text(cri, cid), "Seccomp") == "0"


@pytest.mark.skipif(probe_apparmor().kernel_enabled, reason="AppArmor is enabled on this kernel")
async def test_apparmor_disabled_skips_default_and_refuses_localhost(cri: CRI, pod: Pod) -> None:
    pod_id, pod_cfg = pod
    default = container_config("aa-default", "true")
    default.linux.security_context.apparmor.CopyFrom(RUNTIME_DEFAULT)
    cid = await start(cri, pod_id, pod_cfg, default)
    assert (await wait_exited(cri, cid)).exit_code == 0
    named = container_config("aa-named", "true")
    named.linux.security_context.apparmor.CopyFrom(
        api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref="x")
    )
    assert "AppArmor" in await _refused(cri, pod, named)


async def test_status_says_what_the_node_enforces(cri: CRI) -> None:
    resp = await cri.runtime.Status(api_pb2.StatusRequest(verbose=True))
    security = json.loads(resp.info["security"])
    assert security["seccompFilter"] is True
    assert security["apparmorEnabled"] is probe_apparmor().kernel_enabled
    assert "seccomp" in security["summary"]
