"""Issue 3: pods and containers over a real containerd, with real busybox containers."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from pycri.containerd.client import ContainerdClient
from tests.integration.helpers import CRI, Daemon, eventually, leftovers
from tests.integration.pods import container_config, pod_config, start, status, wait_exited

CRI_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d) (stdout|stderr) (P|F) (.*)$"
)


async def test_sandbox_ready_and_listed(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, config = pod
    st = (
        await cri.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
        )
    ).status
    assert st.state == api_pb2.SANDBOX_READY
    assert st.metadata.name == config.metadata.name
    assert st.created_at > 0
    assert dict(st.annotations) == {"test": "yes"}
    listed = await cri.runtime.ListPodSandbox(
        api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(id=pod_id[:12]))
    )
    assert [s.id for s in listed.items] == [pod_id]
    not_ready = await cri.runtime.ListPodSandbox(
        api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(
                id=pod_id, state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY)
            )
        )
    )
    assert not not_ready.items


async def test_container_logs_in_cri_format(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    cid = await start(
        cri,
        pod_id,
        pod_cfg,
        container_config("logger", "echo hello; echo oops >&2; printf partial; exit 3"),
    )
    st = await wait_exited(cri, cid)
    assert st.exit_code == 3
    assert st.reason == "Error"
    assert st.started_at <= st.finished_at
    lines = Path(st.log_path).read_text().splitlines()
    parsed = [CRI_LINE.match(line) for line in lines]
    assert all(parsed), lines
    entries = [(m.group(3), m.group(4), m.group(5)) for m in parsed if m]
    assert ("stdout", "F", "hello") in entries
    assert ("stderr", "F", "oops") in entries
    assert ("stdout", "P", "partial") in entries


async def test_instant_exit_completed(cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    pod_id, pod_cfg = pod
    cid = await start(cri, pod_id, pod_cfg, container_config("instant", "true"))
    st = await wait_exited(cri, cid)
    assert st.exit_code == 0
    assert st.reason == "Completed"
    assert 0 < st.started_at <= st.finished_at


async def test_exec_sync_output_exit_code_and_timeout(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    cid = await start(cri, pod_id, pod_cfg, container_config("sleeper", "sleep 3600"))
    resp = await cri.runtime.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "echo out; echo err >&2; exit 7"], timeout=10
        )
    )
    assert resp.stdout == b"out\n"
    assert resp.stderr == b"err\n"
    assert resp.exit_code == 7
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=1)
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    # the timed-out exec process was killed: only the container's own sleep remains
    ps = await cri.runtime.ExecSync(
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["ps", "-o", "args"], timeout=10)
    )
    assert b"sleep 30" not in ps.stdout


async def test_stop_kills_sigterm_ignoring_container_at_timeout(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    cid = await start(
        cri,
        pod_id,
        pod_cfg,
        container_config("stubborn", "trap '' TERM; while :; do sleep 0.2; done"),
    )
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2))
    elapsed = time.monotonic() - started
    st = await status(cri, cid)
    assert st.state == api_pb2.CONTAINER_EXITED
    assert st.exit_code == 137
    assert elapsed >= 2  # it waited for the grace period before SIGKILL
    # idempotent on an exited container and on an unknown ID
    await cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2))
    await cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id="f" * 64, timeout=2))


async def test_stop_timeout_zero_kills_at_once(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    cid = await start(cri, pod_id, pod_cfg, container_config("victim", "sleep 3600"))
    started = time.monotonic()
    await cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    assert time.monotonic() - started < 5
    st = await status(cri, cid)
    assert (st.state, st.exit_code) == (api_pb2.CONTAINER_EXITED, 137)


async def test_remove_running_container_and_idempotency(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig], daemon: Daemon
) -> None:
    pod_id, pod_cfg = pod
    cid = await start(cri, pod_id, pod_cfg, container_config("removable", "sleep 3600"))
    await cri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await status(cri, cid)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (daemon.root / "containers" / cid).exists()
    await cri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))


async def test_unknown_ids_are_not_found(cri: CRI) -> None:
    for call, req in [
        (cri.runtime.ContainerStatus, api_pb2.ContainerStatusRequest(container_id="0" * 64)),
        (cri.runtime.PodSandboxStatus, api_pb2.PodSandboxStatusRequest(pod_sandbox_id="0" * 64)),
        (cri.runtime.StartContainer, api_pb2.StartContainerRequest(container_id="0" * 64)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Stop/Remove of unknown IDs succeed
    await cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id="0" * 64))
    await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id="0" * 64))
    await cri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id="0" * 64))


async def test_name_conflict_then_reuse_after_remove(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    config = container_config("twin", "sleep 3600")
    first = await cri.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_cfg)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod_cfg
            )
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.container_id in (err.value.details() or "")
    await cri.runtime.RemoveContainer(
        api_pb2.RemoveContainerRequest(container_id=first.container_id)
    )
    again = await cri.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_cfg)
    )
    assert again.container_id != first.container_id


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (
            lambda c: c.image.__setattr__("image", "docker.io/library/nope:missing"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda c: c.linux.security_context.__setattr__("run_as_username", "nosuchuser"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda c: c.mounts.add(container_path="relative/path", host_path="/tmp"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (lambda c: c.__setattr__("log_path", "../escape.log"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda c: c.image.__setattr__("image", ""), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_failed_create_leaves_nothing(
    cri: CRI,
    pod: tuple[str, api_pb2.PodSandboxConfig],
    ctd: ContainerdClient,
    daemon: Daemon,
    mutate,
    code,
) -> None:  # type: ignore[no-untyped-def]
    pod_id, pod_cfg = pod
    before = await leftovers(daemon, ctd)
    config = container_config("broken", "true")
    mutate(config)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod_cfg
            )
        )
    assert err.value.code() == code, err.value.details()
    assert await leftovers(daemon, ctd) == before
    # and the name is free again
    ok = container_config("broken", "true")
    created = await cri.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=ok, sandbox_config=pod_cfg)
    )
    await cri.runtime.RemoveContainer(
        api_pb2.RemoveContainerRequest(container_id=created.container_id)
    )


async def test_bad_sandbox_config_rejected(
    cri: CRI, images_loaded: None, ctd: ContainerdClient, daemon: Daemon
) -> None:
    before = await leftovers(daemon, ctd)
    config = pod_config("nometa")
    config.metadata.uid = ""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await leftovers(daemon, ctd) == before


async def test_start_failure_is_start_error(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    config = container_config("nobinary", "true")
    config.command[:] = ["/no/such/binary"]
    created = await cri.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_cfg)
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await cri.runtime.StartContainer(
            api_pb2.StartContainerRequest(container_id=created.container_id)
        )
    st = await status(cri, created.container_id)
    assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 128, "StartError")
    assert st.message
    await cri.runtime.RemoveContainer(
        api_pb2.RemoveContainerRequest(container_id=created.container_id)
    )


async def test_list_containers_filters(cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]) -> None:
    pod_id, pod_cfg = pod
    a = await start(cri, pod_id, pod_cfg, container_config("a", "sleep 3600", labels={"app": "x"}))
    b = await start(cri, pod_id, pod_cfg, container_config("b", "true", labels={"app": "y"}))
    await wait_exited(cri, b)

    async def ids(**kw) -> set[str]:  # type: ignore[no-untyped-def]
        resp = await cri.runtime.ListContainers(
            api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(**kw))
        )
        return {c.id for c in resp.containers}

    assert await ids(pod_sandbox_id=pod_id) == {a, b}
    assert await ids(id=a[:10]) == {a}
    assert await ids(label_selector={"app": "y"}) == {b}
    assert await ids(
        pod_sandbox_id=pod_id, state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)
    ) == {a}
    assert await ids(
        pod_sandbox_id=pod_id, state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_EXITED)
    ) == {b}


async def test_update_resources_reopen_log_and_stats(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    cid = await start(
        cri,
        pod_id,
        pod_cfg,
        container_config("res", "while :; do echo tick; sleep 0.2; done", memory_limit=64 << 20),
    )
    await cri.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=cid, linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=96 << 20)
        )
    )
    st = await status(cri, cid)
    assert st.resources.linux.memory_limit_in_bytes == 96 << 20
    out = await cri.runtime.ExecSync(
        api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"], timeout=10
        )
    )
    assert out.stdout.strip() == str(96 << 20).encode()
    # rotate the log like kubelet, then reopen: new lines land in a new file
    log_path = Path(st.log_path)
    log_path.rename(log_path.with_suffix(".1"))
    await cri.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    await eventually(lambda: _has_content(log_path), timeout=5)
    stats = await cri.runtime.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid))
    assert stats.stats.memory.working_set_bytes.value > 0
    assert stats.stats.cpu.usage_core_nano_seconds.value > 0
    pod_stats = await cri.runtime.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest())
    assert pod_id in {s.attributes.id for s in pod_stats.stats}
    # ReopenContainerLog on an exited container fails and creates no file
    await cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    log_path.rename(log_path.with_suffix(".2"))
    with pytest.raises(grpc.aio.AioRpcError):
        await cri.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    assert not log_path.exists()


async def _has_content(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


async def test_killed_pause_makes_sandbox_notready(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig], ctd: ContainerdClient
) -> None:
    pod_id, _ = pod
    await ctd.tasks.kill(pod_id, 9)

    async def notready() -> bool:
        st = await cri.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        )
        return st.status.state == api_pb2.SANDBOX_NOTREADY

    await eventually(notready, timeout=10)


async def test_remove_pod_removes_everything(
    cri: CRI, images_loaded: None, ctd: ContainerdClient, daemon: Daemon, tmp_path: Path
) -> None:
    before = await leftovers(daemon, ctd)
    config = pod_config("gone", log_dir=tmp_path)
    pod_id = (
        await cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    ).pod_sandbox_id
    cid = await start(cri, pod_id, config, container_config("c", "sleep 3600"))
    await cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert (await status(cri, cid)).state == api_pb2.CONTAINER_EXITED
    await cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await leftovers(daemon, ctd) == before
    assert not (daemon.state / "netns" / pod_id).exists()
    assert not (daemon.root / "sandboxes" / pod_id).exists()


async def test_twenty_pods_two_containers_concurrently(
    cri: CRI, images_loaded: None, ctd: ContainerdClient, daemon: Daemon, tmp_path: Path
) -> None:
    before = await leftovers(daemon, ctd)
    netns_before = _netns_pins(daemon)

    async def one(i: int) -> tuple[str, list[str]]:
        config = pod_config(f"many-{i}", log_dir=tmp_path / str(i))
        pod_id = (
            await cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
        ).pod_sandbox_id
        cids = [
            await start(cri, pod_id, config, container_config(f"c{j}", "sleep 3600"))
            for j in range(2)
        ]
        return pod_id, cids

    pods = await asyncio.gather(*(one(i) for i in range(20)))
    for _, cids in pods:
        for cid in cids:
            assert (await status(cri, cid)).state == api_pb2.CONTAINER_RUNNING

    async def teardown(pod_id: str, cids: list[str]) -> None:
        await asyncio.gather(
            *(
                cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=c, timeout=1))
                for c in cids
            )
        )
        await asyncio.gather(
            *(
                cri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=c))
                for c in cids
            )
        )
        await cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    await asyncio.gather(*(teardown(p, c) for p, c in pods))
    assert await leftovers(daemon, ctd) == before
    tasks = await ctd.tasks.list()
    assert not [t for t in tasks if t.id in {p for p, _ in pods}]
    assert _netns_pins(daemon) == netns_before


def _netns_pins(daemon: Daemon) -> int:
    """The daemon's netns pins mounted now (its own only: other daemons may run meanwhile)."""
    pins = f" {daemon.state / 'netns'}/"
    return sum(pins in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


async def test_container_config_reaches_the_process(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig], tmp_path: Path
) -> None:
    pod_id, pod_cfg = pod
    host_dir = tmp_path / "data"
    host_dir.mkdir()
    (host_dir / "hello.txt").write_text("from the host\n")
    config = container_config("configured", "sleep 3600")
    config.envs.add(key="GREETING", value="hi there")
    config.working_dir = "/tmp"
    config.mounts.add(container_path="/data", host_path=str(host_dir), readonly=True)
    sc = config.linux.security_context
    sc.run_as_user.value = 1000
    sc.readonly_rootfs = True
    sc.capabilities.drop_capabilities.append("ALL")
    cid = await start(cri, pod_id, pod_cfg, config)

    async def run(*cmd: str) -> api_pb2.ExecSyncResponse:
        return await cri.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=10)
        )

    assert (await run("sh", "-c", "echo $GREETING")).stdout == b"hi there\n"
    assert (await run("pwd")).stdout == b"/tmp\n"
    assert (await run("id", "-u")).stdout == b"1000\n"
    assert (await run("id", "-g")).stdout == b"1000\n"  # from the image's /etc/passwd (user app)
    assert (await run("cat", "/data/hello.txt")).stdout == b"from the host\n"
    assert (await run("touch", "/data/x")).exit_code != 0  # read-only mount
    assert (await run("touch", "/root-file")).exit_code != 0  # read-only rootfs
    assert (await run("hostname")).stdout.decode().strip() == pod_cfg.hostname
    caps = (await run("grep", "CapEff", "/proc/self/status")).stdout
    assert caps.split()[-1] == b"0000000000000000"
