"""Issue 15: hostile input on a real containerd. Every refusal is typed and early, nothing is
left half-made, nothing is written outside pycri's dirs and the paths a request names, and a
pod being removed takes every container with it. (The fuzz test and the containerd-kill
fault test are in ``test_fuzz.py`` and ``test_faults.py``.)"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from pycri.cgroups import cgroup_dirs
from pycri.containerd.client import ContainerdClient
from pycri.oci.validation import MAX_ANNOTATIONS_BYTES, MAX_LABEL_BYTES, MAX_LABELS_BYTES
from tests.integration.helpers import CRI, Daemon, leftovers, raw_call
from tests.integration.pods import (
    container_config,
    pod_config,
    running_pod,
    start,
    status,
    wait_exited,
)

Pod = tuple[str, api_pb2.PodSandboxConfig]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _create(cri: CRI, pod: Pod, config: api_pb2.ContainerConfig) -> str:
    resp = await cri.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod[0], config=config, sandbox_config=pod[1])
    )
    return resp.container_id


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


# ----------------------------------------------------------------------- 1: create vs remove


async def test_creates_racing_pod_removal_leave_no_container(
    cri: CRI, images_loaded: None, ctd: ContainerdClient, daemon: Daemon, tmp_path: Path
) -> None:
    before = await leftovers(daemon, ctd)
    config = pod_config("race", log_dir=tmp_path)
    async with running_pod(cri, config) as pod_id:
        creates = [
            asyncio.ensure_future(_create(cri, (pod_id, config), container_config(f"c{i}", "true")))
            for i in range(10)
        ]
        await asyncio.sleep(0.02)
        await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        results = await asyncio.gather(*creates, return_exceptions=True)
    for result in results:  # each create either made it before the fence or was refused
        if isinstance(result, grpc.aio.AioRpcError):
            assert result.code() in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
            ), result.details()
        else:
            assert isinstance(result, str)
    listed = await cri.runtime.ListContainers(api_pb2.ListContainersRequest())
    assert not [c for c in listed.containers if c.pod_sandbox_id == pod_id]
    assert await leftovers(daemon, ctd) == before


# ----------------------------------------------------------------------- 4: log directory


@pytest.mark.parametrize("where", ["file", "under-file"])
async def test_log_directory_that_cannot_be_made_is_refused_leaving_nothing(
    cri: CRI, images_loaded: None, ctd: ContainerdClient, daemon: Daemon, tmp_path: Path, where: str
) -> None:
    regular = tmp_path / "regular"
    regular.write_text("x")
    log_dir = regular if where == "file" else regular / "sub"
    before = await leftovers(daemon, ctd)
    err = await _refused(
        cri.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod_config("nolog", log_dir=log_dir))
        )
    )
    assert err.code() == INVALID, err.details()
    assert "log_directory" in (err.details() or "")
    assert await leftovers(daemon, ctd) == before


async def test_a_made_log_directory_is_removed_when_the_pod_is_refused(
    cri: CRI, images_loaded: None, ctd: ContainerdClient, daemon: Daemon, tmp_path: Path
) -> None:
    config = pod_config("later-refused", log_dir=tmp_path / "new" / "logs")
    config.dns_config.servers.append("not-an-ip")  # refused before anything is made
    err = await _refused(cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)))
    assert err.code() == INVALID
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------- 5, 13: cgroups


@pytest.mark.parametrize("parent", ["/../../../../tmp/x", "../../tmp/y", "/pycri-test/../../x"])
async def test_escaping_cgroup_parents_are_refused(
    cri: CRI, images_loaded: None, ctd: ContainerdClient, daemon: Daemon, parent: str
) -> None:
    before = await leftovers(daemon, ctd)
    config = pod_config("cg")
    config.linux.cgroup_parent = parent
    err = await _refused(cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)))
    assert err.code() == INVALID, err.details()
    assert await leftovers(daemon, ctd) == before
    for name in ("tmp/x", "tmp/y", "x"):
        assert not [d for d in cgroup_dirs(name) if d.exists()]


async def test_pods_without_a_cgroup_parent_go_under_the_daemons_own(
    cri: CRI, pod: Pod, daemon: Daemon
) -> None:
    pod_id, _ = pod
    memory = [d for d in cgroup_dirs(f"{daemon.cgroup_parent}/{pod_id}") if "memory" in d.parts]
    assert memory and memory[0].is_dir()
    assert daemon.cgroup_parent != "/pycri"


# ----------------------------------------------------------------------- 6: log path links


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "target.txt").write_text("precious\n")
    return victim


async def test_log_path_symlinks_are_refused_at_create(
    cri: CRI, pod: Pod, victim: Path, ctd: ContainerdClient, daemon: Daemon
) -> None:
    log_dir = Path(pod[1].log_directory)
    (log_dir / "link.log").symlink_to(victim / "target.txt")
    (log_dir / "dirlink").symlink_to(victim)
    before = await leftovers(daemon, ctd)
    for log_path in ("link.log", "dirlink/new.log"):
        config = container_config("linked", "echo pwned", log_path=log_path)
        err = await _refused(_create(cri, pod, config))
        assert err.code() == INVALID, err.details()
    assert await leftovers(daemon, ctd) == before
    assert (victim / "target.txt").read_text() == "precious\n"
    assert not (victim / "new.log").exists()


async def test_a_log_file_swapped_for_a_link_after_create_is_not_followed(
    cri: CRI, pod: Pod, victim: Path
) -> None:
    log_dir = Path(pod[1].log_directory)
    (log_dir / "sub").mkdir()
    cid = await _create(cri, pod, container_config("swap", "echo pwned", log_path="sub/x.log"))
    (log_dir / "sub").rmdir()
    (log_dir / "sub").symlink_to(victim)  # between create and start
    err = await _refused(
        cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    )
    assert err.code() != grpc.StatusCode.INTERNAL
    st = await status(cri, cid)
    assert (st.state, st.reason) == (api_pb2.CONTAINER_EXITED, "StartError")
    assert sorted(os.listdir(victim)) == ["target.txt"]
    assert (victim / "target.txt").read_text() == "precious\n"


# ----------------------------------------------------------------------- 7: pod files


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: setattr(c, "hostname", "evil\n6.6.6.6 registry.k8s.io"),
        lambda c: setattr(c, "hostname", "h" * 65),
        lambda c: setattr(c, "hostname", "-leading-dash"),
        lambda c: c.dns_config.servers.append("10.0.0.1\nnameserver 6.6.6.6"),
        lambda c: c.dns_config.options.append("x\nnameserver 7.7.7.7"),
        lambda c: c.dns_config.searches.append("a.example\nnameserver 8.8.8.8"),
        lambda c: c.dns_config.searches.extend(f"s{i}.example" for i in range(33)),
    ],
)
async def test_newlines_and_bad_names_in_pod_files_are_refused(
    cri: CRI,
    images_loaded: None,
    ctd: ContainerdClient,
    daemon: Daemon,
    mutate: Callable[..., None],
) -> None:
    before = await leftovers(daemon, ctd)
    config = pod_config("dns")
    mutate(config)
    err = await _refused(cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config)))
    assert err.code() == INVALID, err.details()
    assert await leftovers(daemon, ctd) == before


async def test_valid_dns_config_and_fqdn_hostname_are_written_as_given(
    cri: CRI, images_loaded: None, daemon: Daemon
) -> None:
    config = pod_config("dnsok")
    config.hostname = "web-0.web.default.svc.cluster.local"  # 35 characters, an FQDN
    config.dns_config.servers.extend(["10.96.0.10", "fd00::10"])
    config.dns_config.searches.extend(["default.svc.cluster.local", "svc.cluster.local"])
    config.dns_config.options.extend(["ndots:5", "single-request-reopen"])
    async with running_pod(cri, config) as pod_id:
        resolv = (daemon.root / "sandboxes" / pod_id / "resolv.conf").read_text()
        assert resolv.splitlines() == [
            "search default.svc.cluster.local svc.cluster.local",
            "nameserver 10.96.0.10",
            "nameserver fd00::10",
            "options ndots:5 single-request-reopen",
        ]
        hosts = (daemon.root / "sandboxes" / pod_id / "hosts").read_text()
        assert hosts.splitlines()[-1] == f"127.0.1.1\t{config.hostname}"


# ----------------------------------------------------------------------- 8: echoed input


@pytest.mark.parametrize("size", [70_000, 15 << 20])
async def test_huge_ids_are_not_found_without_being_echoed(
    cri: CRI, daemon: Daemon, size: int
) -> None:
    log_size = daemon.log_path.stat().st_size
    err = await _refused(
        cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id="x" * size))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
    assert len(err.details() or "") < 4096
    with daemon.log_path.open("rb") as log:
        log.seek(log_size)
        assert max((len(line) for line in log), default=0) < 8192


# ----------------------------------------------------------------------- 9, 12: sizes, labels


async def test_label_and_annotation_limits(cri: CRI, pod: Pod) -> None:
    at_limit = container_config("big", "true")
    at_limit.annotations.clear()
    at_limit.annotations["a"] = "v" * (MAX_ANNOTATIONS_BYTES - 1)
    at_limit.labels["k"] = "v" * (MAX_LABEL_BYTES - 1)
    cid = await _create(cri, pod, at_limit)
    listed = await cri.runtime.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(id=cid))
    )
    assert listed.ByteSize() < MAX_ANNOTATIONS_BYTES + MAX_LABELS_BYTES + 4096
    too_big: list[Callable[[api_pb2.ContainerConfig], None]] = [
        lambda c: c.annotations.__setitem__("a", "v" * MAX_ANNOTATIONS_BYTES),
        lambda c: c.image.annotations.__setitem__("a", "v" * MAX_ANNOTATIONS_BYTES),
        lambda c: c.labels.__setitem__("k", "v" * MAX_LABEL_BYTES),
        lambda c: c.labels.update({f"k{i}": "v" * 4000 for i in range(70)}),
        lambda c: c.labels.__setitem__("", "empty key"),
        lambda c: c.metadata.__setattr__("name", "n" * 254),
    ]
    for mutate in too_big:
        config = container_config("toobig", "true")
        mutate(config)
        err = await _refused(_create(cri, pod, config))
        assert err.code() == INVALID, err.details()
        assert len(err.details() or "") < 1024
    pod_too_big = pod_config("podbig")
    pod_too_big.annotations["a"] = "v" * MAX_ANNOTATIONS_BYTES
    err = await _refused(
        cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod_too_big))
    )
    assert err.code() == INVALID


# ----------------------------------------------------------------------- 10: undecodable


async def test_undecodable_bodies_on_every_rpc_are_invalid_argument(
    cri: CRI, daemon: Daemon
) -> None:
    log_size = daemon.log_path.stat().st_size
    for service, descriptor in (
        ("runtime.v1.RuntimeService", api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]),
        ("runtime.v1.ImageService", api_pb2.DESCRIPTOR.services_by_name["ImageService"]),
    ):
        for method in descriptor.methods:
            err = await _refused(
                raw_call(cri, f"/{service}/{method.name}", b"\xff", stream=method.server_streaming)
            )
            assert err.code() in (INVALID, grpc.StatusCode.UNIMPLEMENTED), (method.name, err)
    await asyncio.sleep(0.2)
    with daemon.log_path.open("rb") as log:
        log.seek(log_size)
        added = log.read().decode(errors="replace")
    assert "Traceback" not in added and "DecodeError" not in added


# ----------------------------------------------------------------------- 11: stop vs start


@pytest.mark.parametrize("delay_ms", [5, 10, 20, 30, 40])
async def test_stop_during_start_wins(cri: CRI, pod: Pod, delay_ms: int) -> None:
    cid = await _create(cri, pod, container_config(f"sw{delay_ms}", "sleep 3600"))
    starting = asyncio.ensure_future(
        cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    )
    await asyncio.sleep(delay_ms / 1000)
    await cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    await asyncio.gather(starting, return_exceptions=True)
    st = await status(cri, cid)
    assert st.state == api_pb2.CONTAINER_EXITED, api_pb2.ContainerState.Name(st.state)


# ----------------------------------------------------------------------- 12: early checks


def _resources(**fields: object) -> Callable[[api_pb2.ContainerConfig], None]:
    def mutate(config: api_pb2.ContainerConfig) -> None:
        for key, value in fields.items():
            if key == "hugepage":
                config.linux.resources.hugepage_limits.add(page_size=str(value), limit=1 << 21)
            else:
                setattr(config.linux.resources, key, value)

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: setattr(c, "log_path", "nosuchdir/x.log"),
        lambda c: setattr(c, "log_path", "."),
        lambda c: setattr(c, "log_path", "a/./b.log"),
        lambda c: c.mounts.add(container_path="/", host_path="/tmp"),
        lambda c: c.mounts.add(container_path="/proc/sys", host_path="/tmp"),
        _resources(cpu_shares=-1),
        _resources(cpu_period=100),
        _resources(cpu_quota=5),
        _resources(memory_limit_in_bytes=1),
        _resources(memory_limit_in_bytes=-1),
        _resources(oom_score_adj=99999),
        _resources(cpuset_cpus="bogus"),
        _resources(cpuset_cpus="0-4096"),
        _resources(cpuset_mems="7"),
        _resources(hugepage="bogus"),
        lambda c: c.linux.resources.unified.__setitem__("memory.high", "1000000"),  # v1 node
        lambda c: c.labels.__setitem__("", "x"),
    ],
)
async def test_what_runc_would_refuse_is_invalid_argument_at_create(
    cri: CRI, pod: Pod, ctd: ContainerdClient, daemon: Daemon, mutate: Callable[..., None]
) -> None:
    before = await leftovers(daemon, ctd)
    config = container_config("early", "true")
    mutate(config)
    err = await _refused(_create(cri, pod, config))
    assert err.code() == INVALID, err.details()
    assert await leftovers(daemon, ctd) == before


async def test_a_missing_host_path_is_made_as_containerd_does(
    cri: CRI, pod: Pod, tmp_path: Path
) -> None:
    host = tmp_path / "made" / "by" / "create"
    config = container_config("hostpath", "test -d /data && echo ok")
    config.mounts.add(container_path="/data", host_path=str(host))
    cid = await start(cri, *pod, config)
    assert (await wait_exited(cri, cid)).exit_code == 0
    assert host.is_dir()
    blocked = container_config("blocked", "true")
    (tmp_path / "file").write_text("x")
    blocked.mounts.add(container_path="/data", host_path=str(tmp_path / "file" / "sub"))
    err = await _refused(_create(cri, pod, blocked))
    assert err.code() == INVALID, err.details()


async def test_update_after_exit_is_failed_precondition_and_bad_values_invalid(
    cri: CRI, pod: Pod
) -> None:
    cid = await start(cri, *pod, container_config("upd", "sleep 3600"))
    err = await _refused(
        cri.runtime.UpdateContainerResources(
            api_pb2.UpdateContainerResourcesRequest(
                container_id=cid, linux=api_pb2.LinuxContainerResources(cpu_shares=-5)
            )
        )
    )
    assert err.code() == INVALID, err.details()
    await cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
    err = await _refused(
        cri.runtime.UpdateContainerResources(
            api_pb2.UpdateContainerResourcesRequest(
                container_id=cid,
                linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 << 20),
            )
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()


async def test_updates_racing_an_exit_are_failed_precondition(cri: CRI, pod: Pod) -> None:
    """The 10-40 ms between a process exit and its recording gave UNKNOWN."""
    for i in range(5):
        cid = await start(cri, *pod, container_config(f"race{i}", "sleep 0.3"))
        codes = set()
        for _ in range(60):
            try:
                await cri.runtime.UpdateContainerResources(
                    api_pb2.UpdateContainerResourcesRequest(
                        container_id=cid,
                        linux=api_pb2.LinuxContainerResources(cpu_shares=512 + i),
                    )
                )
            except grpc.aio.AioRpcError as err:
                codes.add(err.code())
                if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    break
            await asyncio.sleep(0.01)
        assert codes <= {grpc.StatusCode.FAILED_PRECONDITION}, codes


async def test_reopen_log_after_its_directory_was_deleted_is_failed_precondition(
    cri: CRI, images_loaded: None, tmp_path: Path
) -> None:
    config = pod_config("reopen", log_dir=tmp_path / "logs")
    async with running_pod(cri, config) as pod_id:
        cid = await start(cri, pod_id, config, container_config("r", "sleep 3600"))
        (tmp_path / "logs" / "r.log").unlink()
        (tmp_path / "logs").rmdir()
        err = await _refused(
            cri.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
        )
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert "FileNotFoundError" not in (err.details() or "")
