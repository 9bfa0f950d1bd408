"""The benchmark scenarios, each measuring one thing and checking that the runtime was right.

- ``lifecycle``: N pods, each RunPodSandbox → CreateContainer → StartContainer →
  StopContainer → RemoveContainer → StopPodSandbox → RemovePodSandbox, C pods at a time.
  Measures every RPC's latency (as the client sees it) and pods per second over the whole
  run. Checks: the container is RUNNING after Start and EXITED with code 0 after Stop (it
  traps SIGTERM and exits 0), and no pod or container of the run is left at the end. Before
  Stop the runner waits until the container has set its trap (it creates a file on a
  hostPath mount): otherwise a Stop that comes first is ignored by the PID 1 shell and turns
  into a 10 s grace period and a SIGKILL — a race of the workload, not of the runtime.
- ``exit-latency``: N containers in one pod, each blocked on a FIFO of a hostPath mount,
  released together when the runner opens and closes the FIFO for writing; each then exits
  with its own code. Measures, per container, the time from that release until the runtime
  reports it EXITED — what kubelet waits on before it restarts a container or finishes a
  pod. The runner polls ListContainers (kubelet's relist, filtered to EXITED containers of
  the pod) back to back, because containerd 1.6's plugin has no GetContainerEvents; once
  every container was seen (or the timeout passed) it reads each one's ContainerStatus.
  Checks: the exit code is the container's own, finished_at lies between the release and
  the moment it was seen; a wrong report counts as ``wrong``, a container not EXITED within
  the timeout as ``missing``.
- ``hol`` (head of line): exit-latency with one more container labelled
  ``pycri.faults/delete-delay-seconds`` — pycri (with ``--enable-fault-injection``) holds that
  container's task delete for 30 s; the others must not wait for it, and it must itself be
  reported EXITED as fast as they are. containerd's plugin has no such hook: the label does
  nothing there, so its row is the plain run of the same containers.
- ``rss``: the runtime's resident memory idle, with P running pods (one container each) and
  after they are removed; the memory sampler is the caller's (see ``daemons``).

Every scenario labels what it makes with ``pycri.bench/run=<run label>`` and tears it down
at the end, also after a failure, so one failed scenario does not spoil the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cri_api.v1 import api_pb2

from bench.cri import RPC_TIMEOUT, CriClient, RpcTimer
from bench.specs import (
    BENCH_LABEL,
    RELEASE_FIFO_NAME,
    SLEEPER,
    SLEEPER_WITH_READY,
    container_config,
    pod_config,
    wait_for_release,
)
from bench.stats import summarize

FAULT_DELETE_DELAY_LABEL = "pycri.faults/delete-delay-seconds"
STOP_TIMEOUT_SECONDS = 10
MAX_ERROR_MESSAGES = 10
# Clock slack for finished_at checks: exit timestamps come from the shim's clock reading.
FINISHED_AT_SLACK_NS = 20_000_000

LIFECYCLE_RPCS = (
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
)


@dataclass(kw_only=True)
class Correctness:
    """What the runtime got wrong during a scenario (all zero when it was right)."""

    checked: int = 0
    wrong: int = 0
    missing: int = 0
    failed_rpcs: int = 0
    leaked: int = 0
    messages: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.messages) < MAX_ERROR_MESSAGES:
            self.messages.append(message)

    @property
    def ok(self) -> bool:
        return not (self.wrong or self.missing or self.failed_rpcs or self.leaked)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "wrong": self.wrong,
            "missing": self.missing,
            "failed_rpcs": self.failed_rpcs,
            "leaked": self.leaked,
            "ok": self.ok,
            "messages": self.messages,
        }


def _rpc_error_text(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return repr(err)


# --- lifecycle -------------------------------------------------------------------------


@dataclass(kw_only=True)
class LifecycleResult:
    pods: int
    concurrency: int
    completed: int
    wall_seconds: float
    rpc_seconds: dict[str, list[float]]
    correctness: Correctness

    @property
    def pods_per_second(self) -> float:
        return self.completed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "pods": self.pods,
            "concurrency": self.concurrency,
            "completed": self.completed,
            "wall_seconds": self.wall_seconds,
            "pods_per_second": self.pods_per_second,
            "rpc": {name: summarize(s).to_json() for name, s in self.rpc_seconds.items()},
            "rpc_samples": self.rpc_seconds,
            "correctness": self.correctness.to_json(),
        }


async def _container_state(client: CriClient, container_id: str) -> api_pb2.ContainerStatus:
    response = await client.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id), timeout=RPC_TIMEOUT
    )
    status: api_pb2.ContainerStatus = response.status
    return status


async def _one_pod_lifecycle(
    *,
    client: CriClient,
    timer: RpcTimer,
    correctness: Correctness,
    index: int,
    run_label: str,
    log_directory: Path,
) -> bool:
    rt = client.runtime
    pod = pod_config(
        name=f"lc-{run_label}-{index}", run_label=run_label, log_directory=log_directory
    )
    shared = log_directory / f"shared-{index}"
    shared.mkdir()
    pod_id = ""
    try:
        pod_id = (
            await timer.timed(
                "RunPodSandbox",
                rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod), timeout=RPC_TIMEOUT),
            )
        ).pod_sandbox_id
        config = container_config(
            name="app", script=SLEEPER_WITH_READY, run_label=run_label, shared_host_dir=shared
        )
        container_id = (
            await timer.timed(
                "CreateContainer",
                rt.CreateContainer(
                    api_pb2.CreateContainerRequest(
                        pod_sandbox_id=pod_id, config=config, sandbox_config=pod
                    ),
                    timeout=RPC_TIMEOUT,
                ),
            )
        ).container_id
        await timer.timed(
            "StartContainer",
            rt.StartContainer(
                api_pb2.StartContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT
            ),
        )
        status = await timer.timed("ContainerStatus", _container_state(client, container_id))
        correctness.checked += 1
        if status.state != api_pb2.CONTAINER_RUNNING:
            correctness.wrong += 1
            correctness.note(f"pod {index}: state {status.state} after start, want RUNNING")
        if not await _wait_for_file(shared / "ready", timeout_seconds=STOP_TIMEOUT_SECONDS):
            correctness.note(f"pod {index}: the container did not set its SIGTERM trap")
        await timer.timed(
            "StopContainer",
            rt.StopContainer(
                api_pb2.StopContainerRequest(
                    container_id=container_id, timeout=STOP_TIMEOUT_SECONDS
                ),
                timeout=RPC_TIMEOUT,
            ),
        )
        status = await timer.timed("ContainerStatus", _container_state(client, container_id))
        correctness.checked += 1
        if status.state != api_pb2.CONTAINER_EXITED or status.exit_code != 0:
            correctness.wrong += 1
            correctness.note(
                f"pod {index}: state {status.state} exit {status.exit_code} after stop, "
                "want EXITED 0"
            )
        await timer.timed(
            "RemoveContainer",
            rt.RemoveContainer(
                api_pb2.RemoveContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT
            ),
        )
        await timer.timed(
            "StopPodSandbox",
            rt.StopPodSandbox(
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC_TIMEOUT
            ),
        )
        await timer.timed(
            "RemovePodSandbox",
            rt.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC_TIMEOUT
            ),
        )
        return True
    except grpc.aio.AioRpcError as err:
        correctness.failed_rpcs += 1
        correctness.note(f"pod {index}: {_rpc_error_text(err)}")
        return False


async def _wait_for_file(path: Path, *, timeout_seconds: float) -> bool:
    """Poll for a file the container creates (a stat per millisecond, on the host)."""
    deadline = time.perf_counter() + timeout_seconds
    while not path.exists():  # noqa: ASYNC240 - a host-side stat; no event to wait on
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


async def run_lifecycle(
    *, client: CriClient, pods: int, concurrency: int, run_label: str, work_dir: Path
) -> LifecycleResult:
    log_directory = work_dir / f"logs-{run_label}"
    log_directory.mkdir(parents=True, exist_ok=True)
    timer = RpcTimer()
    correctness = Correctness()
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> bool:
        async with gate:
            return await _one_pod_lifecycle(
                client=client,
                timer=timer,
                correctness=correctness,
                index=index,
                run_label=run_label,
                log_directory=log_directory,
            )

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i) for i in range(pods)))
    wall = time.perf_counter() - started
    # every pod removed itself; what is still listed was left behind
    correctness.leaked += await remove_everything(client=client, run_label=run_label)
    await remove_everything(client=client, run_label=run_label)  # a failed removal, again
    return LifecycleResult(
        pods=pods,
        concurrency=concurrency,
        completed=sum(outcomes),
        wall_seconds=wall,
        rpc_seconds={name: list(timer.samples.get(name, [])) for name in LIFECYCLE_RPCS},
        correctness=correctness,
    )


# --- teardown and leak check -------------------------------------------------------------


async def remove_everything(
    *, client: CriClient, run_label: str | None = None, concurrency: int = 8
) -> int:
    """Remove every pod and container of a run (all of them without a run label); return
    how many were still there."""
    rt = client.runtime
    selector = {BENCH_LABEL: run_label} if run_label is not None else {}
    containers = (
        await rt.ListContainers(
            api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(label_selector=selector)),
            timeout=RPC_TIMEOUT,
        )
    ).containers
    sandboxes = (
        await rt.ListPodSandbox(
            api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(label_selector=selector)),
            timeout=RPC_TIMEOUT,
        )
    ).items
    gate = asyncio.Semaphore(concurrency)

    # A failed removal is left for the next pass (callers look twice), not raised: one
    # runtime error must not abort the whole comparison.
    async def remove_container(container_id: str) -> None:
        async with gate:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await rt.RemoveContainer(
                    api_pb2.RemoveContainerRequest(container_id=container_id),
                    timeout=RPC_TIMEOUT,
                )

    async def remove_pod(pod_id: str) -> None:
        async with gate:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await rt.StopPodSandbox(
                    api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC_TIMEOUT
                )
                await rt.RemovePodSandbox(
                    api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC_TIMEOUT
                )

    await asyncio.gather(*(remove_container(c.id) for c in containers))
    await asyncio.gather(*(remove_pod(s.id) for s in sandboxes))
    return len(containers) + len(sandboxes)


# --- exit latency and head of line -------------------------------------------------------


@dataclass(kw_only=True)
class ExitLatencyResult:
    containers: int
    latencies: list[float]  # seconds from release to EXITED, for the plain containers
    exit_to_seen: list[float]  # seconds from the process exit (finished_at) to EXITED
    delayed_latency: float | None  # the fault-labelled container (hol), if any
    correctness: Correctness
    setup_seconds: float
    teardown_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "containers": self.containers,
            "summary": summarize(self.latencies).to_json(),
            "exit_to_seen_summary": summarize(self.exit_to_seen).to_json(),
            "delayed_latency": self.delayed_latency,
            "latencies": self.latencies,
            "exit_to_seen": self.exit_to_seen,
            "setup_seconds": self.setup_seconds,
            "teardown_seconds": self.teardown_seconds,
            "correctness": self.correctness.to_json(),
        }


def release_fifo(fifo: Path) -> bool:
    """Open the FIFO for writing and close it: every reader blocked on it reads EOF.

    Non-blocking: with no reader at all (no container got as far as the FIFO) the open
    fails with ENXIO instead of hanging, and False says nothing was released.
    """
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:
            return False
        raise
    os.close(fd)
    return True


@dataclass(kw_only=True)
class _Expected:
    container_id: str
    exit_code: int
    delayed: bool


async def _create_and_start(
    *,
    client: CriClient,
    pod_id: str,
    pod: api_pb2.PodSandboxConfig,
    config: api_pb2.ContainerConfig,
) -> str:
    container_id: str = (
        await client.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod
            ),
            timeout=RPC_TIMEOUT,
        )
    ).container_id
    await client.runtime.StartContainer(
        api_pb2.StartContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT
    )
    return container_id


def exit_code_for(index: int) -> int:
    """Each container's own exit code: 1..250, so a mixed-up report shows."""
    return index % 250 + 1


async def run_exit_latency(
    *,
    client: CriClient,
    containers: int,
    run_label: str,
    work_dir: Path,
    delayed_labels: Mapping[str, str] | None = None,
    create_concurrency: int = 8,
    settle_seconds: float = 1.0,
    timeout_seconds: float = 60.0,
    poll_interval_seconds: float = 0.002,
    before_release: Callable[[], Awaitable[None]] | None = None,
    after_exits: Callable[[], Awaitable[None]] | None = None,
) -> ExitLatencyResult:
    """Release ``containers`` containers at once and time each one's EXITED report.

    With ``delayed_labels``, one more container carries them (hol); it is timed apart.
    ``before_release`` and ``after_exits`` bracket the measured window (the profiler's hooks).
    """
    shared = work_dir / f"shared-{run_label}"
    shared.mkdir(parents=True, exist_ok=True)
    fifo = shared / RELEASE_FIFO_NAME
    os.mkfifo(fifo)
    log_directory = work_dir / f"logs-{run_label}"
    log_directory.mkdir(parents=True, exist_ok=True)
    correctness = Correctness()
    rt = client.runtime
    setup_started = time.perf_counter()
    pod = pod_config(name=f"exit-{run_label}", run_label=run_label, log_directory=log_directory)
    pod_id: str = (
        await rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod), timeout=RPC_TIMEOUT)
    ).pod_sandbox_id
    gate = asyncio.Semaphore(create_concurrency)

    async def start_one(index: int, *, delayed: bool) -> _Expected:
        code = 200 if delayed else exit_code_for(index)
        config = container_config(
            name=f"delayed-{index}" if delayed else f"c{index}",
            script=wait_for_release(exit_code=code),
            run_label=run_label,
            labels=delayed_labels if delayed else None,
            shared_host_dir=shared,
        )
        async with gate:
            container_id = await _create_and_start(
                client=client, pod_id=pod_id, pod=pod, config=config
            )
        return _Expected(container_id=container_id, exit_code=code, delayed=delayed)

    try:
        plan = [start_one(i, delayed=False) for i in range(containers)]
        if delayed_labels:
            plan.append(start_one(containers, delayed=True))
        expected = await asyncio.gather(*plan)
        await _check_all_running(client=client, pod_id=pod_id, correctness=correctness)
        await asyncio.sleep(settle_seconds)  # every shell is blocked opening the FIFO
        setup_seconds = time.perf_counter() - setup_started
        if before_release is not None:
            await before_release()
        seen_at, exit_to_seen = await _release_and_watch(
            client=client,
            pod_id=pod_id,
            fifo=fifo,
            expected=expected,
            correctness=correctness,
            timeout_seconds=timeout_seconds,
            poll_interval_seconds=poll_interval_seconds,
        )
        if after_exits is not None:
            await after_exits()
    finally:
        teardown_started = time.perf_counter()
        correctness.leaked += await _teardown_and_count_leaks(client=client, run_label=run_label)
        teardown_seconds = time.perf_counter() - teardown_started
        with contextlib.suppress(OSError):
            fifo.unlink()
    latencies = [
        seen_at[e.container_id] for e in expected if not e.delayed and e.container_id in seen_at
    ]
    delayed = [seen_at.get(e.container_id) for e in expected if e.delayed]
    return ExitLatencyResult(
        containers=containers,
        latencies=sorted(latencies),
        exit_to_seen=sorted(exit_to_seen),
        delayed_latency=delayed[0] if delayed else None,
        correctness=correctness,
        setup_seconds=setup_seconds,
        teardown_seconds=teardown_seconds,
    )


async def _check_all_running(*, client: CriClient, pod_id: str, correctness: Correctness) -> None:
    listed = (
        await client.runtime.ListContainers(
            api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod_id)),
            timeout=RPC_TIMEOUT,
        )
    ).containers
    for container in listed:
        if container.state != api_pb2.CONTAINER_RUNNING:
            correctness.wrong += 1
            correctness.note(f"{container.id[:12]} is {container.state} before the release")


async def _release_and_watch(
    *,
    client: CriClient,
    pod_id: str,
    fifo: Path,
    expected: list[_Expected],
    correctness: Correctness,
    timeout_seconds: float,
    poll_interval_seconds: float,
) -> tuple[dict[str, float], list[float]]:
    """Release the FIFO, then relist until every container is EXITED (or the timeout)."""
    by_id = {e.container_id: e for e in expected}
    pending = set(by_id)
    seen_at: dict[str, float] = {}
    exit_to_seen: list[float] = []
    seen_wall_ns: dict[str, int] = {}
    released_wall_ns = time.time_ns()
    await asyncio.to_thread(release_fifo, fifo)
    released = time.perf_counter()
    # Only EXITED containers are listed: the daemon builds no entries for the others, so
    # the relist costs it little while it is busy with the exits being measured.
    list_request = api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(
            pod_sandbox_id=pod_id,
            state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_EXITED),
        )
    )

    async def check(container_id: str, seen_wall_ns: int) -> None:
        want = by_id[container_id]
        correctness.checked += 1
        try:
            status = await _container_state(client, container_id)
        except grpc.aio.AioRpcError as err:
            correctness.failed_rpcs += 1
            correctness.note(f"{container_id[:12]}: ContainerStatus {_rpc_error_text(err)}")
            return
        finished = status.finished_at
        in_window = released_wall_ns - FINISHED_AT_SLACK_NS <= finished <= seen_wall_ns
        if status.state != api_pb2.CONTAINER_EXITED or status.exit_code != want.exit_code:
            correctness.wrong += 1
            correctness.note(
                f"{container_id[:12]}: state {status.state} exit {status.exit_code}, "
                f"want EXITED {want.exit_code}"
            )
        elif not in_window:
            correctness.wrong += 1
            correctness.note(f"{container_id[:12]}: finished_at {finished} outside the release")
        else:
            exit_to_seen.append(max(seen_wall_ns - finished, 0) / 1e9)

    while pending and time.perf_counter() - released < timeout_seconds:
        try:
            listed = (
                await client.runtime.ListContainers(list_request, timeout=RPC_TIMEOUT)
            ).containers
        except grpc.aio.AioRpcError as err:
            correctness.failed_rpcs += 1
            correctness.note(f"ListContainers: {_rpc_error_text(err)}")
            await asyncio.sleep(0.1)
            continue
        now = time.perf_counter()
        now_wall_ns = time.time_ns()
        for container in listed:
            if container.id in pending and container.state == api_pb2.CONTAINER_EXITED:
                pending.discard(container.id)
                seen_at[container.id] = now - released
                seen_wall_ns[container.id] = now_wall_ns
        if pending:
            await asyncio.sleep(poll_interval_seconds)
    # The status checks come after the window, so they do not load the daemon during it
    # (finished_at, once recorded, never changes).
    await asyncio.gather(*(check(cid, wall_ns) for cid, wall_ns in seen_wall_ns.items()))
    correctness.missing += len(pending)
    for container_id in sorted(pending):
        correctness.note(f"{container_id[:12]}: not EXITED {timeout_seconds:.0f}s after release")
    return seen_at, exit_to_seen


async def _teardown_and_count_leaks(*, client: CriClient, run_label: str) -> int:
    """Remove what the scenario made; count what a second look still finds (leaks)."""
    await remove_everything(client=client, run_label=run_label)
    return await remove_everything(client=client, run_label=run_label)


# --- memory ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RssResult:
    pods: int
    idle: dict[str, Any]
    loaded: dict[str, Any]
    after_removal: dict[str, Any]
    running_when_loaded: int
    correctness: Correctness

    def to_json(self) -> dict[str, Any]:
        return {
            "pods": self.pods,
            "idle": self.idle,
            "loaded": self.loaded,
            "after_removal": self.after_removal,
            "running_when_loaded": self.running_when_loaded,
            "correctness": self.correctness.to_json(),
        }


async def run_rss(
    *,
    client: CriClient,
    pods: int,
    concurrency: int,
    run_label: str,
    work_dir: Path,
    sample_memory: Callable[[], Awaitable[dict[str, Any]]],
    settle_seconds: float = 3.0,
) -> RssResult:
    """Memory idle, with ``pods`` running pods (one sleeping container each), after removal."""
    log_directory = work_dir / f"logs-{run_label}"
    log_directory.mkdir(parents=True, exist_ok=True)
    correctness = Correctness()
    rt = client.runtime
    await asyncio.sleep(settle_seconds)
    idle = await sample_memory()
    gate = asyncio.Semaphore(concurrency)

    async def start_pod(index: int) -> None:
        pod = pod_config(
            name=f"rss-{run_label}-{index}", run_label=run_label, log_directory=log_directory
        )
        async with gate:
            try:
                pod_id = (
                    await rt.RunPodSandbox(
                        api_pb2.RunPodSandboxRequest(config=pod), timeout=RPC_TIMEOUT
                    )
                ).pod_sandbox_id
                config = container_config(name="app", script=SLEEPER, run_label=run_label)
                await _create_and_start(client=client, pod_id=pod_id, pod=pod, config=config)
            except grpc.aio.AioRpcError as err:
                correctness.failed_rpcs += 1
                correctness.note(f"pod {index}: {_rpc_error_text(err)}")

    try:
        await asyncio.gather(*(start_pod(i) for i in range(pods)))
        await asyncio.sleep(settle_seconds)
        loaded = await sample_memory()
        running = [
            c
            for c in (
                await rt.ListContainers(
                    api_pb2.ListContainersRequest(
                        filter=api_pb2.ContainerFilter(
                            label_selector={BENCH_LABEL: run_label},
                            state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING),
                        )
                    ),
                    timeout=RPC_TIMEOUT,
                )
            ).containers
        ]
        correctness.checked += pods
        if len(running) != pods:
            correctness.missing += pods - len(running)
            correctness.note(f"{len(running)} of {pods} containers RUNNING under load")
    finally:
        correctness.leaked += await _teardown_and_count_leaks(client=client, run_label=run_label)
    await asyncio.sleep(settle_seconds)
    after = await sample_memory()
    return RssResult(
        pods=pods,
        idle=idle,
        loaded=loaded,
        after_removal=after,
        running_when_loaded=len(running),
        correctness=correctness,
    )
