"""Issue 5: restart recovery and crash safety with real SIGKILLs of pycri and containerd."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import NotFoundError
from tests.integration.helpers import CRI, Daemon, eventually, import_test_images, pycri_cli
from tests.integration.pods import container_config, pod_config, remove_all_pods

WAIT_FOR_RELEASE = "read x < /shared/go; exit {code}"


class Node:
    """A daemon plus its clients, restartable in place."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.cri = CRI(daemon.socket)
        self.ctd = ContainerdClient(str(daemon.containerd_socket))

    async def restart(self, *, sig: int = signal.SIGKILL) -> None:
        await self.cri.close()
        self.daemon.stop(sig)
        self.daemon.start()
        self.cri = CRI(self.daemon.socket)

    async def close(self) -> None:
        await self.cri.close()
        await self.ctd.close()

    async def run_pod(self, name: str, tmp: Path) -> tuple[str, api_pb2.PodSandboxConfig]:
        config = pod_config(name, log_dir=tmp / name)
        resp = await self.cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
        return resp.pod_sandbox_id, config

    async def create(
        self, pod: tuple[str, api_pb2.PodSandboxConfig], config: api_pb2.ContainerConfig
    ) -> str:
        resp = await self.cri.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod[0], config=config, sandbox_config=pod[1]
            )
        )
        return resp.container_id

    async def start(
        self, pod: tuple[str, api_pb2.PodSandboxConfig], config: api_pb2.ContainerConfig
    ) -> str:
        cid = await self.create(pod, config)
        await self.cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        return cid

    async def status(self, cid: str) -> api_pb2.ContainerStatus:
        return (
            await self.cri.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid))
        ).status

    async def pod_state(self, pod_id: str) -> int:
        resp = await self.cri.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        )
        return resp.status.state

    async def task_pid(self, cid: str) -> int | None:
        try:
            return int((await self.ctd.tasks.get(cid)).pid)
        except NotFoundError:
            return None

    async def remove_all(self) -> None:
        await remove_all_pods(self.cri)

    async def assert_nothing_leaked(self) -> None:
        assert [c.id for c in await self.ctd.containers.list()] == []
        assert [t.id for t in await self.ctd.tasks.list()] == []
        assert [s.name for s in await self.ctd.snapshots.list("overlayfs") if s.kind == 2] == []
        assert [
            lease.id
            for lease in await self.ctd.leases.list()
            if lease.id.startswith("pycri-create")
        ] == []
        netns_dir = self.daemon.state / "netns"
        assert not netns_dir.exists() or list(netns_dir.iterdir()) == []
        for sub in ("sandboxes", "containers"):
            d = self.daemon.root / sub
            assert not d.exists() or list(d.iterdir()) == []


@pytest.fixture
async def node(make_daemon: type[Daemon]):  # type: ignore[no-untyped-def]
    d = make_daemon()
    d.start()
    await import_test_images(d.containerd_socket)
    n = Node(d)
    yield n
    await n.close()


def _release(fifo: Path) -> None:
    fd = os.open(fifo, os.O_WRONLY)
    os.close(fd)


def _shared(config: api_pb2.ContainerConfig, shared: Path) -> api_pb2.ContainerConfig:
    config.mounts.add(container_path="/shared", host_path=str(shared))
    return config


async def test_sigkill_pycri_keeps_containers_and_recovers_every_state(
    node: Node, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.mkfifo(shared / "go")
    pod = await node.run_pod("keep", tmp_path)
    running = await node.start(
        pod, container_config("ticker", "while :; do echo tick; sleep 0.1; done")
    )
    created = await node.create(pod, container_config("later", "sleep 3600"))
    exited = await node.start(pod, container_config("done", "exit 3"))
    waiter = await node.start(
        pod, _shared(container_config("waiter", WAIT_FOR_RELEASE.format(code=7)), shared)
    )
    await eventually(lambda: _state_is(node, exited, api_pb2.CONTAINER_EXITED))
    containerd_pid = (node.daemon.state / "containerd" / "containerd.pid").read_text()
    running_pid = await node.task_pid(running)
    log_path = Path((await node.status(running)).log_path)

    await node.cri.close()
    node.daemon.stop(signal.SIGKILL)
    # while pycri is down: one container exits
    released_at = time.time_ns()
    await asyncio.to_thread(_release, shared / "go")
    await asyncio.sleep(0.5)
    node.daemon.start()
    node.cri = CRI(node.daemon.socket)

    assert "adopted running managed containerd" in node.daemon.log()
    assert (node.daemon.state / "containerd" / "containerd.pid").read_text() == containerd_pid
    assert await node.pod_state(pod[0]) == api_pb2.SANDBOX_READY
    st = await node.status(running)
    assert st.state == api_pb2.CONTAINER_RUNNING
    assert await node.task_pid(running) == running_pid  # never disturbed
    assert (await node.status(created)).state == api_pb2.CONTAINER_CREATED
    st = await node.status(exited)
    assert (st.state, st.exit_code) == (api_pb2.CONTAINER_EXITED, 3)
    st = await eventually(lambda: _state_is(node, waiter, api_pb2.CONTAINER_EXITED))
    assert st.exit_code == 7
    assert released_at <= st.finished_at < released_at + 2_000_000_000  # containerd's time
    await eventually(lambda: _task_gone(node, waiter))
    # the log keeps growing after the restart (output re-attached)
    size = log_path.stat().st_size
    await eventually(lambda: _bigger(log_path, size), timeout=5)
    # names were re-reserved
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.create(pod, container_config("ticker", "true"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # the CREATED one can still start; the running one stops normally
    await node.cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=created))
    assert (await node.status(created)).state == api_pb2.CONTAINER_RUNNING
    await node.cri.runtime.StopContainer(
        api_pb2.StopContainerRequest(container_id=running, timeout=1)
    )
    assert (await node.status(running)).state == api_pb2.CONTAINER_EXITED
    await node.remove_all()
    await node.assert_nothing_leaked()


async def _state_is(node: Node, cid: str, state: int) -> api_pb2.ContainerStatus | None:
    st = await node.status(cid)
    return st if st.state == state else None


async def _task_gone(node: Node, cid: str) -> bool:
    return await node.task_pid(cid) is None


async def _bigger(path: Path, size: int) -> bool:
    return path.stat().st_size > size


async def test_sigkill_while_fifty_containers_exit(node: Node, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.mkfifo(shared / "go")
    pod = await node.run_pod("fifty", tmp_path)
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        async with sem:
            return await node.start(
                pod, _shared(container_config(f"c{i}", WAIT_FOR_RELEASE.format(code=i + 1)), shared)
            )

    cids = await asyncio.gather(*(one(i) for i in range(50)))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(_release, shared / "go")
    await asyncio.sleep(0.05)  # some exits handled, some not
    await node.restart(sig=signal.SIGKILL)

    async def all_exited() -> list[api_pb2.ContainerStatus] | None:
        sts = await asyncio.gather(*(node.status(c) for c in cids))
        return sts if all(s.state == api_pb2.CONTAINER_EXITED for s in sts) else None

    statuses = await eventually(all_exited, timeout=30)
    assert [s.exit_code for s in statuses] == [i + 1 for i in range(50)]
    assert all(s.reason == "Error" for s in statuses)

    async def no_tasks() -> bool:
        return not {t.id for t in await node.ctd.tasks.list()} & set(cids)

    await eventually(no_tasks, timeout=30)
    await node.remove_all()
    await node.assert_nothing_leaked()


async def test_sigkill_during_remove_pod_sandbox(node: Node, tmp_path: Path) -> None:
    pods = [await node.run_pod(f"halfremoved{j}", tmp_path) for j in range(4)]
    for pod in pods:
        for i in range(3):
            await node.start(pod, container_config(f"c{i}", "sleep 3600"))
    removals = [
        asyncio.ensure_future(
            node.cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=p[0]))
        )
        for p in pods
    ]
    await asyncio.sleep(0.1)  # the removals are under way, in different steps
    node.daemon.stop(signal.SIGKILL)
    outcomes = await asyncio.gather(*removals, return_exceptions=True)
    assert any(isinstance(o, grpc.aio.AioRpcError) for o in outcomes), outcomes
    await node.restart(sig=signal.SIGKILL)
    # a repeated remove finishes what the first one began
    for pod in pods:
        await node.cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod[0]))
        await node.cri.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod[0])
        )
    await node.remove_all()
    await node.assert_nothing_leaked()


async def test_containerd_killed_while_containers_run_and_exit(node: Node, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.mkfifo(shared / "go")
    pod = await node.run_pod("ctdkill", tmp_path)
    cids = [
        await node.start(
            pod, _shared(container_config(f"c{i}", WAIT_FOR_RELEASE.format(code=10 + i)), shared)
        )
        for i in range(5)
    ]
    survivor = await node.start(pod, container_config("survivor", "sleep 3600"))
    await asyncio.sleep(0.5)
    pid_file = node.daemon.state / "containerd" / "containerd.pid"
    old_pid = int(pid_file.read_text())
    os.kill(old_pid, signal.SIGKILL)
    await asyncio.to_thread(_release, shared / "go")  # exits while containerd is down

    async def runtime_ready(want: bool) -> bool:
        resp = await node.cri.runtime.Status(api_pb2.StatusRequest())
        return {c.type: c.status for c in resp.status.conditions}["RuntimeReady"] is want

    await eventually(lambda: runtime_ready(False), timeout=5)
    await eventually(lambda: runtime_ready(True), timeout=30)
    assert int(pid_file.read_text()) != old_pid

    async def all_exited() -> list[api_pb2.ContainerStatus] | None:
        sts = await asyncio.gather(*(node.status(c) for c in cids))
        return sts if all(s.state == api_pb2.CONTAINER_EXITED for s in sts) else None

    statuses = await eventually(all_exited, timeout=30)
    assert [s.exit_code for s in statuses] == [10 + i for i in range(5)]
    assert (await node.status(survivor)).state == api_pb2.CONTAINER_RUNNING
    await node.cri.runtime.StopContainer(
        api_pb2.StopContainerRequest(container_id=survivor, timeout=0)
    )
    assert (await node.status(survivor)).exit_code == 137
    await node.remove_all()
    await node.assert_nothing_leaked()


async def test_corrupt_and_missing_checkpoints(node: Node, tmp_path: Path) -> None:
    pod = await node.run_pod("ckpt", tmp_path)
    corrupt_running = await node.start(pod, container_config("a", "sleep 3600"))
    missing_exited = await node.start(pod, container_config("b", "exit 4"))
    missing_running = await node.start(pod, container_config("c", "sleep 3600"))
    await eventually(lambda: _state_is(node, missing_exited, api_pb2.CONTAINER_EXITED))
    started_at = (await node.status(corrupt_running)).started_at
    await node.cri.close()
    node.daemon.stop(signal.SIGTERM)
    (node.daemon.root / "containers" / corrupt_running / "status").write_text("{garbage")
    (node.daemon.root / "containers" / missing_exited / "status").unlink()
    (node.daemon.root / "containers" / missing_running / "status").unlink()
    node.daemon.start()
    node.cri = CRI(node.daemon.socket)
    assert "container status checkpoint lost" in node.daemon.log()
    st = await node.status(corrupt_running)
    assert st.state == api_pb2.CONTAINER_RUNNING  # rebuilt from the running task
    assert abs(st.started_at - started_at) < 1_000_000_000  # from the process start time
    assert st.created_at > 0
    assert (await node.status(missing_running)).state == api_pb2.CONTAINER_RUNNING
    st = await node.status(missing_exited)
    assert st.state == api_pb2.CONTAINER_EXITED  # no task left: exit code lost
    assert (st.exit_code, st.reason) == (255, "Unknown")
    assert st.created_at > 0
    await node.cri.runtime.StopContainer(
        api_pb2.StopContainerRequest(container_id=corrupt_running, timeout=0)
    )
    assert (await node.status(corrupt_running)).exit_code == 137
    await node.remove_all()
    await node.assert_nothing_leaked()


async def test_rpcs_refused_until_recovered(make_daemon: type[Daemon]) -> None:
    d = make_daemon()
    d.start()
    assert "recovered state from containerd" in d.log()
    log = d.log()
    assert log.index("recovered state from containerd") < log.index("pycri is ready")


async def test_orphans_listed_and_collected(node: Node, tmp_path: Path) -> None:
    from pycri.net.netns import NetNS

    pod = await node.run_pod("kept", tmp_path)
    kept = await node.start(pod, container_config("kept", "sleep 3600"))
    d = node.daemon
    (d.root / "sandboxes" / ("a" * 64)).mkdir(parents=True)
    (d.root / "containers" / ("b" * 64)).mkdir(parents=True)
    stray_ns = await NetNS(d.state / "netns").create("c" * 64)
    # A snapshot with neither a lease nor a gc.root label is garbage to containerd itself: its
    # next GC (scheduled after any delete, later on a busy machine) would remove it before
    # pycri looks. A stray one that lingers is held by something; here, a gc.root label.
    await node.ctd.snapshots.prepare(
        "overlayfs", "stray-snapshot", "", labels={"containerd.io/gc.root": "test"}
    )

    def cli(*cmd: str) -> str:
        return pycri_cli(d, *cmd)

    listed = await asyncio.to_thread(cli, "check", "--orphans")
    assert "a" * 64 in listed and "b" * 64 in listed
    assert str(stray_ns) in listed and "stray-snapshot" in listed
    assert pod[0] not in listed and kept not in listed
    removed = await asyncio.to_thread(cli, "gc")
    assert "4 orphan(s) removed" in removed
    assert "0 orphan(s) found" in await asyncio.to_thread(cli, "check", "--orphans")
    assert not stray_ns.exists()
    assert (await node.status(kept)).state == api_pb2.CONTAINER_RUNNING  # untouched
    await node.remove_all()
    await node.assert_nothing_leaked()
