"""bench.stats, bench.specs and the containerd-CRI config of bench.daemons: pure checks."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from bench.daemons import render_containerd_cri_config
from bench.specs import SLEEPER, container_config, pod_config, wait_for_release
from bench.stats import percentile, ratio, summarize


def test_percentile_interpolates_between_ranks() -> None:
    samples = [float(i) for i in range(1, 101)]  # 1..100
    assert percentile(samples, q=0) == 1
    assert percentile(samples, q=100) == 100
    assert percentile(samples, q=50) == pytest.approx(50.5)
    assert percentile(samples, q=99) == pytest.approx(99.01)
    assert percentile(list(reversed(samples)), q=50) == pytest.approx(50.5)


def test_percentile_edges() -> None:
    assert percentile([3.0], q=99) == 3.0
    assert math.isnan(percentile([], q=50))
    with pytest.raises(ValueError):
        percentile([1.0], q=101)


def test_summarize_and_ratio() -> None:
    s = summarize([0.1, 0.2, 0.3, 0.4])
    assert (s.count, s.max) == (4, 0.4)
    assert s.mean == pytest.approx(0.25)
    assert s.p50 == pytest.approx(0.25)
    empty = summarize([])
    assert empty.count == 0 and math.isnan(empty.p99)
    assert ratio(1.0, 4.0) == 0.25
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def test_containerd_cri_config_has_the_settings_both_runtimes_share(tmp_path: Path) -> None:
    doc = tomllib.loads(render_containerd_cri_config(base=tmp_path))
    assert doc["version"] == 2
    assert doc["root"] == f"{tmp_path}/root" and doc["state"] == f"{tmp_path}/state"
    assert doc["grpc"]["address"] == f"{tmp_path}/containerd.sock"
    assert "disabled_plugins" not in doc  # the CRI plugin is on
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "registry.k8s.io/pause:3.9"
    assert cri["restrict_oom_score_adj"] is True  # this VM lacks CAP_SYS_RESOURCE
    assert cri["disable_cgroup"] is False
    assert cri["cni"]["conf_dir"] == f"{tmp_path}/cni"
    assert cri["containerd"]["snapshotter"] == "overlayfs"
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is False


def test_pods_use_the_host_network_and_containers_their_own_pid_namespace(
    tmp_path: Path,
) -> None:
    pod = pod_config(name="p", run_label="r1", log_directory=tmp_path)
    options = pod.linux.security_context.namespace_options
    assert options.network == api_pb2.NODE
    assert options.pid == api_pb2.CONTAINER
    assert pod.hostname == ""  # runc refuses a hostname in the host's UTS namespace
    assert pod.labels["pycri.bench/run"] == "r1"
    config = container_config(
        name="c", script=wait_for_release(exit_code=7), run_label="r1", shared_host_dir=tmp_path
    )
    assert config.linux.security_context.namespace_options.pid == api_pb2.CONTAINER
    assert list(config.command) == ["sh", "-c", "read x < /shared/go; exit 7"]
    assert [(m.container_path, m.host_path) for m in config.mounts] == [("/shared", str(tmp_path))]
    assert "trap" in SLEEPER  # a PID 1 shell ignores SIGTERM unless it traps it


def test_children_of_finds_direct_children() -> None:
    import os
    import subprocess

    from bench.daemons import _children_of

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in _children_of({os.getpid()})
    finally:
        child.kill()
        child.wait()


async def test_quiet_machine_wait_is_bounded() -> None:
    from bench.daemons import wait_for_quiet_machine

    waited = await wait_for_quiet_machine(idle_fraction=1.01, window_seconds=0.05, max_seconds=0.2)
    assert 0.2 <= waited < 1.0  # an impossible idle fraction: gives up at the cap
