"""Issue 15, item 2 and the fault test: a create whose rollback fails (containerd down) is
undone anyway, by the undo journal, across a crash of pycri, or by ``pycri gc``; and a
SIGKILL of the managed containerd in the middle of 20 pod creations ends with every RPC
answered with a typed status, every exit recorded right, and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from pycri.service.faults import FAULT_ROLLBACK_FAIL
from tests.integration.helpers import (
    CRI,
    Daemon,
    Leftovers,
    containerd_of,
    eventually,
    import_test_images,
    leftovers,
    pycri_cli,
    shims_of,
)
from tests.integration.pods import container_config, pod_config, remove_all_pods, status

# What a client may get while containerd is killed and restarted (never INTERNAL).
TYPED = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


class Node:
    """A fault-injection daemon with its clients."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.cri = CRI(daemon.socket)

    async def restart(self) -> None:
        await self.cri.close()
        self.daemon.start()
        self.cri = CRI(self.daemon.socket)

    async def snapshot(self) -> Leftovers:
        async with containerd_of(self.daemon) as ctd:
            return await leftovers(self.daemon, ctd)

    async def remove_all(self) -> None:
        await remove_all_pods(self.cri)

    async def back_to(self, before: Leftovers, *, timeout: float = 30) -> None:
        async def clean() -> bool:
            return await self.snapshot() == before

        try:
            await eventually(clean, timeout=timeout, interval=0.5)
        except AssertionError:
            assert await self.snapshot() == before  # shows the difference
        await eventually(lambda: _no_shims(self.daemon), timeout=timeout)


async def _no_shims(daemon: Daemon) -> bool:
    return not shims_of(daemon)


@pytest.fixture
async def node(make_daemon: type[Daemon]) -> AsyncIterator[Node]:
    d = make_daemon(["--enable-fault-injection"])
    d.start()
    await import_test_images(d.containerd_socket)
    n = Node(d)
    yield n
    await n.cri.close()


def _failing_pod(name: str) -> api_pb2.PodSandboxConfig:
    """A pod whose pause task cannot start (runc refuses the sysctl) and whose rollback
    steps all fail, as they would with containerd gone: a half-made sandbox is left."""
    config = pod_config(name, labels={FAULT_ROLLBACK_FAIL: "100"})
    config.linux.sysctls["net.ipv4.ip_local_port_range"] = "not numbers"
    return config


async def _run_failing_pod(node: Node, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.cri.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=_failing_pod(name))
        )
    # runc's refusal, as containerd passes it on
    assert err.value.code() == grpc.StatusCode.UNKNOWN, err.value.details()
    assert "ip_local_port_range" in (err.value.details() or "")


async def _listed_pods(node: Node) -> list[str]:
    pods = await node.cri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest())
    return [p.id for p in pods.items]


# ----------------------------------------------------------------------- 2: durable undo


async def test_failed_rollback_steps_are_finished_by_the_undo_journal(node: Node) -> None:
    before = await node.snapshot()
    await _run_failing_pod(node, "undo")
    left = await node.snapshot()
    assert left.containers - before.containers  # the half-made sandbox's record is there
    assert len(left.files - before.files) >= 2  # its files and its intent
    assert await _listed_pods(node) == []  # but nobody lists it
    await node.back_to(before)  # the journal removes it on its own
    assert "half-made object undone" in node.daemon.log()


async def test_a_crash_before_the_undo_does_not_forget_it(node: Node) -> None:
    before = await node.snapshot()
    await _run_failing_pod(node, "crash")
    node.daemon.stop(signal.SIGKILL)  # within the first retry's delay
    assert (await node.snapshot()).containers - before.containers
    await node.restart()
    assert await _listed_pods(node) == []  # never loaded as a pod
    await node.back_to(before)
    # its name is free again
    pod_id = (
        await node.cri.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod_config("crash"))
        )
    ).pod_sandbox_id
    assert await _listed_pods(node) == [pod_id]
    await node.remove_all()


async def test_gc_finishes_half_made_objects_of_a_dead_daemon(node: Node) -> None:
    before = await node.snapshot()
    await _run_failing_pod(node, "gc")
    node.daemon.stop(signal.SIGKILL)  # its managed containerd lives on
    listed = await asyncio.to_thread(pycri_cli, node.daemon, "check", "--orphans")
    assert "half-made" in listed, listed
    removed = await asyncio.to_thread(pycri_cli, node.daemon, "gc")
    assert "orphan(s) removed" in removed and "0 orphan(s)" not in removed, removed
    assert "0 orphan(s) found" in await asyncio.to_thread(
        pycri_cli, node.daemon, "check", "--orphans"
    )
    await node.back_to(before)
    await node.restart()
    assert await _listed_pods(node) == []


# ----------------------------------------------------------------------- the fault test

PODS = 20
WORKERS = 5
KILL_AFTER = 8


async def test_containerd_killed_during_twenty_pod_creations(node: Node, tmp_path: Path) -> None:
    before = await node.snapshot()
    started: list[tuple[str, str, int]] = []  # pod, container, the exit code it chose
    refused: list[grpc.StatusCode] = []
    killed = asyncio.Event()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(PODS):
        queue.put_nowait(i)

    async def one(i: int) -> None:
        config = pod_config(f"f{i}", log_dir=tmp_path / str(i))
        code = random.randint(1, 100)
        try:
            pod_id = (
                await node.cri.runtime.RunPodSandbox(
                    api_pb2.RunPodSandboxRequest(config=config), timeout=90
                )
            ).pod_sandbox_id
            cid = (
                await node.cri.runtime.CreateContainer(
                    api_pb2.CreateContainerRequest(
                        pod_sandbox_id=pod_id,
                        config=container_config("c", f"sleep 1; exit {code}"),
                        sandbox_config=config,
                    ),
                    timeout=90,
                )
            ).container_id
            await node.cri.runtime.StartContainer(
                api_pb2.StartContainerRequest(container_id=cid), timeout=90
            )
        except grpc.aio.AioRpcError as err:
            assert err.code() in TYPED, (err.code(), err.details())
            refused.append(err.code())
            return
        started.append((pod_id, cid, code))
        if len(started) == KILL_AFTER and not killed.is_set():
            killed.set()
            pid = int((node.daemon.state / "containerd" / "containerd.pid").read_text())
            os.kill(pid, signal.SIGKILL)

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    assert killed.is_set() and len(started) + len(refused) == PODS
    # every container that started exits with the code it chose, recorded as such
    deadline = time.monotonic() + 60
    for _, cid, code in started:

        async def exited(cid: str = cid) -> api_pb2.ContainerStatus | None:
            st = await status(node.cri, cid)
            return st if st.state == api_pb2.CONTAINER_EXITED else None

        st = await eventually(exited, timeout=max(deadline - time.monotonic(), 1))
        assert st.exit_code == code, (cid, st.exit_code, st.reason)
    # no pod that is not listed survives, and the listed ones go with Stop/Remove
    listed = set(await _listed_pods(node))
    assert {pod for pod, _, _ in started} <= listed
    await node.remove_all()
    await node.back_to(before, timeout=60)
    assert "0 orphan(s) found" in await asyncio.to_thread(
        pycri_cli, node.daemon, "check", "--orphans"
    )
