"""Issue 4: the event monitor on real containers: isolation, retries, OOM, stop, events."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import NotFoundError
from tests.integration.helpers import (
    CRI,
    Daemon,
    containerd_of,
    eventually,
    import_test_images,
    short_tmp,
)
from tests.integration.pods import container_config, pod_config, start, status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fdaemon() -> Iterator[Daemon]:
    """A daemon with fault injection and metrics on."""
    port = _free_port()
    d = Daemon(
        base=short_tmp("pycri-f-"),
        extra_args=["--enable-fault-injection", "--metrics-address", f"127.0.0.1:{port}"],
    )
    d.metrics_port = port  # type: ignore[attr-defined]
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
async def fcri(fdaemon: Daemon) -> AsyncIterator[CRI]:
    await import_test_images(fdaemon.containerd_socket)
    client = CRI(fdaemon.socket)
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def fctd(fdaemon: Daemon) -> AsyncIterator[ContainerdClient]:
    async with containerd_of(fdaemon) as client:
        yield client


@pytest.fixture
async def shared_pod(
    fcri: CRI, tmp_path: Path
) -> AsyncIterator[tuple[str, api_pb2.PodSandboxConfig, Path]]:
    shared = tmp_path / "shared"
    shared.mkdir()
    config = pod_config(f"ev-{time.monotonic_ns()}", log_dir=tmp_path / "logs", host_network=True)
    pod_id = (
        await fcri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    ).pod_sandbox_id
    yield pod_id, config, shared
    await fcri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await fcri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def _with_shared(config: api_pb2.ContainerConfig, shared: Path) -> api_pb2.ContainerConfig:
    config.mounts.add(container_path="/shared", host_path=str(shared))
    return config


def _release(fifo: Path) -> None:
    """Open the release FIFO for writing and close it: every waiting reader gets EOF."""
    fd = os.open(fifo, os.O_WRONLY)
    os.close(fd)


async def _task_exists(ctd: ContainerdClient, cid: str) -> bool:
    try:
        await ctd.tasks.get(cid)
        return True
    except NotFoundError:
        return False


WAIT_FOR_RELEASE = "read x < /shared/go; exit {code}"


async def test_hundred_exits_not_held_up_by_a_stuck_delete(
    fcri: CRI, fctd: ContainerdClient, shared_pod
) -> None:  # type: ignore[no-untyped-def]
    pod_id, pod_cfg, shared = shared_pod
    fifo = shared / "go"
    os.mkfifo(fifo)
    stuck = await start(
        fcri,
        pod_id,
        pod_cfg,
        _with_shared(
            container_config(
                "stuck",
                WAIT_FOR_RELEASE.format(code=42),
                labels={"pycri.faults/delete-delay-seconds": "30"},
            ),
            shared,
        ),
    )
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        async with sem:
            cfg = _with_shared(
                container_config(f"c{i}", WAIT_FOR_RELEASE.format(code=i % 50 + 1)), shared
            )
            return await start(fcri, pod_id, pod_cfg, cfg)

    cids = await asyncio.gather(*(one(i) for i in range(100)))
    # every container must be blocked on the FIFO before the release
    await asyncio.sleep(1)
    await asyncio.to_thread(_release, fifo)

    async def all_exited() -> list[api_pb2.ContainerStatus] | None:
        sts = await asyncio.gather(*(status(fcri, c) for c in [stuck, *cids]))
        return sts if all(s.state == api_pb2.CONTAINER_EXITED for s in sts) else None

    try:
        statuses = await eventually(all_exited, timeout=25)
    except AssertionError:
        sts = await asyncio.gather(*(status(fcri, c) for c in [stuck, *cids]))
        raise AssertionError(
            [
                (i, s.state, s.exit_code)
                for i, s in enumerate(sts)
                if s.state != api_pb2.CONTAINER_EXITED
            ]
        ) from None
    # The order of events, not a clock: every exit is reported while the stuck
    # container's task delete is still held up by its 30 s fault.
    assert await _task_exists(fctd, stuck)
    assert statuses[0].exit_code == 42
    assert [s.exit_code for s in statuses[1:]] == [i % 50 + 1 for i in range(100)]

    async def others_deleted() -> bool:
        return not any(await asyncio.gather(*(_task_exists(fctd, c) for c in cids)))

    # the other teardowns are not held up either: all done while the stuck one waits
    await eventually(others_deleted, timeout=20, interval=0.5)
    assert await _task_exists(fctd, stuck)

    async def stuck_deleted() -> bool:
        return not await _task_exists(fctd, stuck)

    await eventually(stuck_deleted, timeout=45, interval=0.5)


async def test_failing_deletes_are_retried_with_exit_reported_first(
    fcri: CRI, fctd: ContainerdClient, shared_pod
) -> None:  # type: ignore[no-untyped-def]
    pod_id, pod_cfg, _ = shared_pod
    cid = await start(
        fcri,
        pod_id,
        pod_cfg,
        container_config("flaky-delete", "exit 5", labels={"pycri.faults/delete-fail-times": "3"}),
    )

    async def exited() -> api_pb2.ContainerStatus | None:
        st = await status(fcri, cid)
        return st if st.state == api_pb2.CONTAINER_EXITED else None

    st = await eventually(exited, timeout=5)
    assert st.exit_code == 5
    assert await _task_exists(fctd, cid)  # delete failed so far, exit already visible

    async def deleted() -> bool:
        return not await _task_exists(fctd, cid)

    await eventually(deleted, timeout=20, interval=0.5)  # retries after 1, 2, 4 s


async def test_failing_status_writes_keep_original_finished_at(fcri: CRI, shared_pod) -> None:  # type: ignore[no-untyped-def]
    pod_id, pod_cfg, _ = shared_pod
    cid = await start(
        fcri,
        pod_id,
        pod_cfg,
        container_config(
            "flaky-persist", "exit 9", labels={"pycri.faults/persist-fail-times": "2"}
        ),
    )
    started = time.time_ns()

    async def exited() -> api_pb2.ContainerStatus | None:
        st = await status(fcri, cid)
        return st if st.state == api_pb2.CONTAINER_EXITED else None

    st = await eventually(exited, timeout=15)
    seen_at = time.time_ns()
    assert st.exit_code == 9
    # two failed writes cost ≥ 1 + 2 s of backoff; finished_at is still the real exit time
    assert seen_at - started >= 2_500_000_000
    assert st.finished_at - started < 1_500_000_000


async def test_oom_killed_reported_on_first_exited_read(fcri: CRI, shared_pod) -> None:  # type: ignore[no-untyped-def]
    pod_id, pod_cfg, _ = shared_pod
    cfg = container_config("hog", 'x=a; while :; do x="$x$x"; done', memory_limit=32 << 20)
    cid = await start(fcri, pod_id, pod_cfg, cfg)

    async def exited() -> api_pb2.ContainerStatus | None:
        st = await status(fcri, cid)
        return st if st.state == api_pb2.CONTAINER_EXITED else None

    st = await eventually(exited, timeout=30, interval=0.02)
    assert (st.exit_code, st.reason) == (137, "OOMKilled")


async def test_concurrent_stops_send_one_signal(fcri: CRI, shared_pod) -> None:  # type: ignore[no-untyped-def]
    pod_id, pod_cfg, _ = shared_pod
    cid = await start(
        fcri,
        pod_id,
        pod_cfg,
        container_config("stubborn", "trap 'echo got-term' TERM; while :; do sleep 0.1; done"),
    )
    await asyncio.sleep(0.5)
    await asyncio.gather(
        fcri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2)),
        fcri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2)),
    )
    st = await status(fcri, cid)
    assert (st.state, st.exit_code) == (api_pb2.CONTAINER_EXITED, 137)
    assert Path(st.log_path).read_text().count("got-term") == 1


async def test_stop_with_short_deadline_leaves_container_running(fcri: CRI, shared_pod) -> None:  # type: ignore[no-untyped-def]
    pod_id, pod_cfg, _ = shared_pod
    cid = await start(
        fcri,
        pod_id,
        pod_cfg,
        container_config("deadline", "trap '' TERM; while :; do sleep 0.1; done"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fcri.runtime.StopContainer(
            api_pb2.StopContainerRequest(container_id=cid, timeout=30), timeout=1
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await status(fcri, cid)).state == api_pb2.CONTAINER_RUNNING
    await fcri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))
    assert (await status(fcri, cid)).state == api_pb2.CONTAINER_EXITED


async def test_two_event_subscribers_see_every_event_in_order(fcri: CRI, tmp_path: Path) -> None:
    received: list[list[tuple[str, int, int]]] = [[], []]
    ready = [asyncio.Event(), asyncio.Event()]

    async def listen(i: int) -> None:
        call = fcri.runtime.GetContainerEvents(api_pb2.GetEventsRequest())
        ready[i].set()
        async for ev in call:
            assert ev.HasField("pod_sandbox_status")
            received[i].append((ev.container_id, ev.container_event_type, ev.created_at))

    listeners = [asyncio.create_task(listen(i)) for i in range(2)]
    await asyncio.gather(*(r.wait() for r in ready))
    await asyncio.sleep(0.3)
    config = pod_config("events", log_dir=tmp_path)
    pod_id = (
        await fcri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    ).pod_sandbox_id
    cid = await start(fcri, pod_id, config, container_config("e", "exit 0"))
    await eventually(lambda: _exited(fcri, cid), timeout=10)
    await fcri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    await fcri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await fcri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    await asyncio.sleep(0.3)
    for task in listeners:
        task.cancel()
    expected = [
        (pod_id, api_pb2.CONTAINER_CREATED_EVENT),
        (pod_id, api_pb2.CONTAINER_STARTED_EVENT),
        (cid, api_pb2.CONTAINER_CREATED_EVENT),
        (cid, api_pb2.CONTAINER_STARTED_EVENT),
        (cid, api_pb2.CONTAINER_STOPPED_EVENT),
        (cid, api_pb2.CONTAINER_DELETED_EVENT),
        (pod_id, api_pb2.CONTAINER_STOPPED_EVENT),
        (pod_id, api_pb2.CONTAINER_DELETED_EVENT),
    ]
    for events in received:
        mine = [(c, t) for c, t, _ in events if c in (pod_id, cid)]
        assert mine == expected, [(c[:6], t) for c, t in mine] + [pod_id[:6], cid[:6]]
        stamps = [ts for _, _, ts in events]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


async def _exited(cri: CRI, cid: str) -> bool:
    return (await status(cri, cid)).state == api_pb2.CONTAINER_EXITED


async def test_reads_answer_while_containerd_is_stalled(
    fcri: CRI, fdaemon: Daemon, shared_pod
) -> None:  # type: ignore[no-untyped-def]
    pod_id, pod_cfg, _ = shared_pod
    cid = await start(fcri, pod_id, pod_cfg, container_config("steady", "sleep 3600"))
    pid = int((fdaemon.state / "containerd" / "containerd.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # every containerd call now hangs
    try:
        for _ in range(3):
            await fcri.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=1)
            await fcri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=1)
            await fcri.runtime.ContainerStatus(
                api_pb2.ContainerStatusRequest(container_id=cid), timeout=1
            )
            await fcri.runtime.PodSandboxStatus(
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=1
            )
            await fcri.runtime.Status(api_pb2.StatusRequest(), timeout=1)
            await fcri.image.ListImages(api_pb2.ListImagesRequest(), timeout=1)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_metrics_endpoint(fdaemon: Daemon, fcri: CRI) -> None:
    port = fdaemon.metrics_port  # type: ignore[attr-defined]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "pycri_exit_handling_seconds_count" in body
    assert "pycri_backoff_queue_depth" in body
    assert "pycri_exit_monitors" in body
    count = next(
        ln for ln in body.splitlines() if ln.startswith("pycri_exit_handling_seconds_count")
    )
    assert int(float(count.split()[1])) > 0
