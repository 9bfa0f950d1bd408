"""The pull scenario: PullImage of a large image from a local registry, on both runtimes.

The image has one layer of ``big_mib`` MiB of random (incompressible) data, gzip'd as a
registry would serve it, and ``small_layers`` layers of one small file each on top; it is
built once per run (``pycri.testing.images``), pushed to a plain-HTTP Debian docker-registry
on 127.0.0.1 (``pycri.testing.registry``, ``pycri.testing.push``) and pulled over CRI:

- pycri reaches the loopback registry over plain HTTP by itself (after one refused TLS
  handshake per daemon, which the first, unmeasured warm-up pull pays);
- containerd's CRI plugin gets a ``hosts.toml`` for the registry's host under its
  ``config_path`` (``bench.daemons``) with an ``http://`` server; it reads the file at
  every pull, so it can be written after containerd started.

Each trial, per runtime (the order swapped every trial, the machine let settle before each):
PullImage (timed, as kubelet sees it, and the CPU seconds the runtime's daemon processes
spent meanwhile), ImageStatus must name the built image ID, then
RemoveImage, and the layers' content and the image's snapshots must be collected by
containerd's GC (and no ingest left) before the next trial, so every pull starts from
nothing. What is still there after ``GC_WAIT`` seconds counts as leaked. With ``ctr``
installed, ``ctr images pull --plain-http`` into containerd-CRI's containerd is timed the
same way, as a reference (it skips CRI's bookkeeping, nothing else), in a namespace of its
own (in ``k8s.io`` the CRI plugin would take the image in too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc.aio
from cri_api.v1 import api_pb2

from bench.cri import RPC_TIMEOUT, CriClient
from bench.daemons import ContainerdCri, Runtime, cpu_seconds
from bench.scenarios import Correctness
from pycri.config import RegistryConfig
from pycri.containerd.client import K8S_NAMESPACE, ContainerdClient
from pycri.containerd.errors import NotFoundError
from pycri.images import spec
from pycri.images.registry import Registry
from pycri.testing.images import BuiltImage, LayerEntry, build_image
from pycri.testing.push import push_layout
from pycri.testing.registry import LocalRegistry

SCENARIO = "pull"
CTR_SCENARIO = "ctr-pull"
CTR_BINARY = "/usr/bin/ctr"
REPOSITORY = "bench/pull"
SNAPSHOTTER = "overlayfs"
CTR_NAMESPACE = "bench-ctr"  # not k8s.io: the CRI plugin would take the pulled image in too
GC_WAIT = 30.0  # seconds for containerd's GC to drop a removed image's content


@dataclass(frozen=True, kw_only=True)
class PullPlan:
    trials: int = 3  # per runtime and repetition
    big_mib: int = 256
    small_layers: int = 3
    ctr: bool = True  # also time ``ctr images pull`` when ctr is installed


QUICK_PULL_PLAN = PullPlan(trials=1, big_mib=8)


class _Session(Protocol):
    """What the pull scenario needs of ``bench.run.Session``."""

    runtimes: list[Runtime]
    clients: dict[str, CriClient]

    async def settle(self) -> None: ...

    def record(
        self, *, rep: int, runtime: Runtime, scenario: str, params: dict[str, Any], result: Any
    ) -> None: ...


@dataclass(kw_only=True)
class PullResult:
    seconds: float
    bytes: int
    gc_seconds: float
    correctness: Correctness
    # CPU seconds of the runtime's daemon processes during the pull (pycri: pycri + its
    # containerd), less noisy than wall time on a shared machine
    cpu_seconds: float = float("nan")
    cpu_parts: dict[str, float] = field(default_factory=dict)  # per daemon process

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "cpu_parts": self.cpu_parts,
            "bytes": self.bytes,
            "gc_seconds": self.gc_seconds,
            "correctness": self.correctness.to_json(),
        }


def build_pull_image(path: Path, *, ref: str, big_mib: int, small_layers: int) -> BuiltImage:
    """The benchmark image (blocking: random data, gzip and hashing of ``big_mib`` MiB)."""
    etc = LayerEntry(path="etc", kind="dir", mode=0o755)
    big = [
        LayerEntry(path="data", kind="dir", mode=0o755),
        LayerEntry(path="data/random.bin", kind="file", data=os.urandom(big_mib << 20)),
    ]
    small = [
        [etc, LayerEntry(path=f"etc/small-{i}", kind="file", data=secrets.token_bytes(4096))]
        for i in range(small_layers)
    ]
    return build_image(
        path,
        ref=ref,
        entries=big,
        more_layers=small,
        config_fields={"cmd": ["/bin/true"]},
    )


def containerd_hosts_toml(host: str) -> str:
    """containerd's ``hosts.toml`` for a plain-HTTP registry at ``host``."""
    return (
        f'server = "http://{host}"\n\n'
        f'[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n'
    )


@dataclass(kw_only=True)
class PullFixture:
    """The built image and the registry serving it, for one run."""

    image: BuiltImage
    registry: LocalRegistry

    def configure(self, runtime: ContainerdCri) -> None:
        hosts = runtime.registry_hosts_dir / self.registry.host
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(containerd_hosts_toml(self.registry.host))


@contextlib.asynccontextmanager
async def serve_image(*, work_dir: Path, plan: PullPlan) -> AsyncIterator[PullFixture]:
    """Build the image, start the registry, push; stop and delete it all after the block."""
    base = work_dir / "pull"
    base.mkdir(parents=True, exist_ok=True)
    registry = LocalRegistry(base / "registry")
    await asyncio.to_thread(registry.start)
    pusher = Registry(RegistryConfig())
    try:
        ref = f"{registry.host}/{REPOSITORY}:{secrets.token_hex(4)}"
        tarball = base / "image.oci.tar"
        image = await asyncio.to_thread(
            build_pull_image,
            tarball,
            ref=ref,
            big_mib=plan.big_mib,
            small_layers=plan.small_layers,
        )
        await push_layout(pusher, tarball, ref)
        await asyncio.to_thread(tarball.unlink)
        yield PullFixture(image=image, registry=registry)
    finally:
        await pusher.close()
        await asyncio.to_thread(registry.stop)
        shutil.rmtree(base, ignore_errors=True)


async def _left_over(containerd: ContainerdClient, image: BuiltImage) -> list[str]:
    """The image's blobs and snapshots containerd still has, and any open ingest."""
    left: list[str] = []
    for layer in image.layers:
        with contextlib.suppress(NotFoundError):
            await containerd.content.info(layer.digest)
            left.append(f"content {layer.digest}")
    for chain_id in spec.chain_ids([layer.diff_id for layer in image.layers]):
        with contextlib.suppress(NotFoundError):
            await containerd.snapshots.stat(SNAPSHOTTER, chain_id)
            left.append(f"snapshot {chain_id}")
    left += [f"ingest {status.ref}" for status in await containerd.content.list_statuses()]
    return left


async def _wait_collected(
    containerd: ContainerdClient, image: BuiltImage, correctness: Correctness
) -> float:
    started = time.monotonic()
    while left := await _left_over(containerd, image):
        if time.monotonic() - started > GC_WAIT:
            correctness.leaked += len(left)
            correctness.note(f"after {GC_WAIT:.0f} s: {', '.join(left)}")
            break
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def _image_bytes(image: BuiltImage) -> int:
    return sum(layer.size for layer in image.layers)


async def pull_once(*, client: CriClient, runtime: Runtime, image: BuiltImage) -> PullResult:
    """PullImage (timed), check, RemoveImage, wait until containerd collected it all."""
    correctness = Correctness()
    spec_ = api_pb2.ImageSpec(image=image.ref)
    seconds = float("nan")
    cpu: dict[str, float] = {}
    try:
        pids = runtime.daemon_pids()
        cpu_before = {name: cpu_seconds({name: pid}) for name, pid in pids.items()}
        started = time.perf_counter()
        await client.image.PullImage(api_pb2.PullImageRequest(image=spec_), timeout=RPC_TIMEOUT)
        seconds = time.perf_counter() - started
        cpu = {name: cpu_seconds({name: pid}) - cpu_before[name] for name, pid in pids.items()}
        correctness.checked += 1
        status = await client.image.ImageStatus(
            api_pb2.ImageStatusRequest(image=spec_), timeout=RPC_TIMEOUT
        )
        if status.image.id != image.image_id:
            correctness.wrong += 1
            correctness.note(f"ImageStatus id {status.image.id!r}, built {image.image_id}")
        await client.image.RemoveImage(api_pb2.RemoveImageRequest(image=spec_), timeout=RPC_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        correctness.failed_rpcs += 1
        correctness.note(f"{err.code().name}: {err.details()}")
    result = await _finish(runtime, image, seconds, correctness)
    result.cpu_seconds, result.cpu_parts = sum(cpu.values()) if cpu else float("nan"), cpu
    return result


async def _finish(
    runtime: Runtime,
    image: BuiltImage,
    seconds: float,
    correctness: Correctness,
    *,
    namespace: str = K8S_NAMESPACE,
) -> PullResult:
    containerd = ContainerdClient(str(runtime.containerd_socket), namespace=namespace)
    try:
        gc_seconds = await _wait_collected(containerd, image, correctness)
    finally:
        await containerd.close()
    return PullResult(
        seconds=seconds, bytes=_image_bytes(image), gc_seconds=gc_seconds, correctness=correctness
    )


async def _ctr(runtime: Runtime, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        CTR_BINARY,
        "-a",
        str(runtime.containerd_socket),
        "-n",
        CTR_NAMESPACE,
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace")[-500:]


async def ctr_pull_once(*, runtime: Runtime, image: BuiltImage) -> PullResult:
    """``ctr images pull --plain-http`` (unpacks too), timed; then ``rm --sync``."""
    correctness = Correctness()
    started = time.perf_counter()
    code, err = await _ctr(runtime, "images", "pull", "--plain-http", image.ref)
    seconds = time.perf_counter() - started if code == 0 else float("nan")
    correctness.checked += 1
    if code:
        correctness.failed_rpcs += 1
        correctness.note(f"ctr pull: {err}")
    code, err = await _ctr(runtime, "images", "rm", "--sync", image.ref)
    if code:
        correctness.failed_rpcs += 1
        correctness.note(f"ctr rm: {err}")
    return await _finish(runtime, image, seconds, correctness, namespace=CTR_NAMESPACE)


async def run(
    session: _Session,
    *,
    fixture: PullFixture,
    plan: PullPlan,
    rep: int,
    log: Callable[[str], None],
) -> None:
    """One repetition: ``plan.trials`` pulls per runtime, alternating (+ ctr as reference)."""
    image = fixture.image
    params = {"mib": plan.big_mib, "small_layers": plan.small_layers}
    if rep == 0:  # warm-up, unrecorded: connections, pycri's scheme fallback, page cache
        for runtime in session.runtimes:
            await pull_once(client=session.clients[runtime.name], runtime=runtime, image=image)
        log(f"  pull: {image.ref}, {_image_bytes(image) / (1 << 20):.0f} MiB of layers")
    with_ctr = plan.ctr and shutil.which(CTR_BINARY) is not None
    for trial in range(plan.trials):
        order = session.runtimes if (rep + trial) % 2 == 0 else session.runtimes[::-1]
        for runtime in order:
            await session.settle()
            client = session.clients[runtime.name]
            results = [(SCENARIO, await pull_once(client=client, runtime=runtime, image=image))]
            if with_ctr and isinstance(runtime, ContainerdCri):
                await session.settle()
                results.append((CTR_SCENARIO, await ctr_pull_once(runtime=runtime, image=image)))
            for scenario, result in results:
                session.record(
                    rep=rep,
                    runtime=runtime,
                    scenario=scenario,
                    params={**params, "trial": trial, "seconds": round(result.seconds, 3)},
                    result=result,
                )
