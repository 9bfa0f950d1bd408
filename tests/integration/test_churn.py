"""Churn (issue 17, item 1): a few hundred host-network pods through the whole lifecycle,
eight at a time, as kubelet turns pods over on a busy node.

Half the containers exit by themselves with their own code, half are killed by
StopContainer; every one is then removed right away, and its pod stopped and removed. This is
the load under which RemoveContainer/RemovePodSandbox used to race the exit handler's own task
delete (failed event handling, dropped retries and shims left running with no task). It must
end with every exit code right, no failed event handling in the log, and nothing left: no
container, task, active snapshot or lease in containerd, no files, cgroups or mounts of
pycri's, no shim.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cri_api.v1 import api_pb2

from tests.integration.helpers import (
    CRI,
    Daemon,
    containerd_of,
    eventually,
    import_test_images,
    leftovers,
    shims_of,
)
from tests.integration.pods import container_config, pod_config, wait_exited

PODS = 240
CONCURRENCY = 8
KILLED = 137  # 128 + SIGKILL: StopContainer with timeout 0


def _exit_code(index: int) -> int:
    return index % 100 + 1


async def _churn_one(cri: CRI, index: int, log_dir: Path) -> int:
    """One pod's lifecycle; the exit code the runtime reported for its container."""
    pod = pod_config(f"churn-{index}", host_network=True, log_dir=log_dir)
    pod_id = (
        await cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod))
    ).pod_sandbox_id
    exits_by_itself = index % 2 == 0
    script = f"exit {_exit_code(index)}" if exits_by_itself else "sleep 300"
    container_id = (
        await cri.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id,
                config=container_config(f"c{index}", script),
                sandbox_config=pod,
            )
        )
    ).container_id
    await cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id))
    if not exits_by_itself:
        await cri.runtime.StopContainer(
            api_pb2.StopContainerRequest(container_id=container_id, timeout=0)
        )
    exit_code = (await wait_exited(cri, container_id, timeout=60)).exit_code
    await cri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id))
    await cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    return exit_code


async def test_churn_leaves_nothing_and_reports_every_exit(
    make_daemon: type[Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    daemon.start()
    await import_test_images(daemon.containerd_socket)
    cri = CRI(daemon.socket)
    try:
        async with containerd_of(daemon) as ctd:
            before = await leftovers(daemon, ctd)
            slots = asyncio.Semaphore(CONCURRENCY)

            async def one(index: int) -> int:
                async with slots:
                    return await _churn_one(cri, index, tmp_path / "logs")

            codes = await asyncio.gather(*(one(i) for i in range(PODS)))
            expected = [_exit_code(i) if i % 2 == 0 else KILLED for i in range(PODS)]
            assert codes == expected
            assert (await cri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest())).items == []
            assert (
                await cri.runtime.ListContainers(api_pb2.ListContainersRequest())
            ).containers == []
            assert await leftovers(daemon, ctd) == before
        await eventually(lambda: _no_shims(daemon), timeout=10)
        log = daemon.log_path.read_text(errors="replace")
        assert log.count("container exit recorded") == PODS
        # The old race showed as a failed handling whose retry was then dropped by the removal.
        problems = ("event handler failed", "event handling failed", "events dropped", "Traceback")
        for problem in problems:
            assert problem not in log, problem
    finally:
        await cri.close()


async def _no_shims(daemon: Daemon) -> bool:
    return not shims_of(daemon)
