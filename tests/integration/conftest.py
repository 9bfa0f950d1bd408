"""Fixtures for the integration tests: a real containerd and real pycri daemons, in temp dirs.

Everything runs as root on the real kernel with Debian's containerd and runc. Each test
session gets its own managed containerd (``containerd`` fixture) and each daemon fixture its
own dirs and socket, so tests never touch a system containerd or each other's state. What the
fixtures are built from lives in ``helpers.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from pycri.containerd.client import ContainerdClient
from pycri.containerd.supervisor import ManagedContainerd
from tests.integration.helpers import (
    CRI,
    CRICTL,
    FLAKY_PLUGIN,
    BuiltTestImages,
    Daemon,
    Net,
    build_test_images,
    containerd_of,
    import_test_images,
    kill_shims,
    short_tmp,
    umount_below,
    used_links,
    used_subnets,
)
from tests.integration.pods import pod_config

if os.geteuid() != 0:  # pragma: no cover - CI and developers run as root
    pytest.exit("integration tests need root (containers, mounts, namespaces)", returncode=1)


@pytest.fixture(scope="session")
async def containerd() -> AsyncIterator[ContainerdClient]:
    """A private containerd for tests that talk to containerd directly."""
    base = short_tmp("pycri-ctd-")
    managed = ManagedContainerd(root=base / "root", state=base / "state")
    await managed.start()
    client = ContainerdClient(str(managed.socket))
    await client.ensure_namespace()
    try:
        yield client
    finally:
        await client.close()
        await managed.stop()
        kill_shims(str(managed.socket))
        umount_below(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_daemon() -> Iterator[type[Daemon]]:
    """Factory for daemons that a test starts and stops itself; all cleaned up after."""
    made: list[Daemon] = []

    class _Factory(Daemon):
        def __init__(self, extra_args: list[str] | None = None) -> None:
            super().__init__(base=short_tmp("pycri-d-"), extra_args=extra_args or [])
            made.append(self)

    yield _Factory
    for d in made:
        d.cleanup()


@pytest.fixture(scope="session")
def crictl() -> Path:
    """The real crictl binary; the test is skipped, saying why, where there is none."""
    if not os.access(CRICTL, os.X_OK):
        pytest.skip(f"crictl not found at {CRICTL} (set PYCRI_TEST_CRICTL to a crictl binary)")
    return CRICTL


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    """One pycri daemon (with its managed containerd) shared by a test session."""
    d = Daemon(base=short_tmp("pycri-s-"))
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="session")
async def cri(daemon: Daemon) -> AsyncIterator[CRI]:
    client = CRI(daemon.socket)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
async def test_images() -> BuiltTestImages:
    """busybox + pause tarballs (refs ``BUSYBOX_REF``, ``PAUSE_REF``), built once per session."""
    return await asyncio.to_thread(build_test_images)


@pytest.fixture(scope="session")
async def ctd(daemon: Daemon) -> AsyncIterator[ContainerdClient]:
    """A containerd client on the session daemon's containerd."""
    async with containerd_of(daemon) as client:
        yield client


@pytest.fixture(scope="session")
async def images_loaded(daemon: Daemon) -> None:
    """busybox and pause in the session daemon's containerd."""
    await import_test_images(daemon.containerd_socket)


@pytest.fixture
async def pod(
    cri: CRI, images_loaded: None, tmp_path: Path
) -> AsyncIterator[tuple[str, api_pb2.PodSandboxConfig]]:
    """A pod on the session daemon (own log dir), stopped and removed after the test."""
    config = pod_config(f"pod-{time.monotonic_ns()}", log_dir=tmp_path / "logs")
    resp = await cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    yield resp.pod_sandbox_id, config
    await cri.runtime.StopPodSandbox(
        api_pb2.StopPodSandboxRequest(pod_sandbox_id=resp.pod_sandbox_id)
    )
    await cri.runtime.RemovePodSandbox(
        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=resp.pod_sandbox_id)
    )


@pytest.fixture
def net() -> Iterator[Net]:
    """A CNI setup of this test's own: conf and plugin dirs, a bridge and a /24 no other test
    or concurrent run uses, host-local's data dir; the bridge is deleted afterwards."""
    base = Path(tempfile.mkdtemp(prefix="pycri-cni-", dir="/tmp"))
    taken, routes = used_links(), used_subnets()
    while True:  # unique per test and per concurrent run on this node
        bridge = f"pycri-t{random.randrange(16**4):04x}"
        octet = random.randrange(1, 255)
        if bridge not in taken and f"10.99.{octet}." not in routes:
            break
    n = Net(base=base, bridge=bridge, octet=octet)
    n.bin_dir.mkdir()
    flaky = n.bin_dir / "pycri-flaky"
    flaky.write_text(FLAKY_PLUGIN.format(python=sys.executable))
    flaky.chmod(0o755)
    n.ipam_dir.mkdir()
    try:
        yield n
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
