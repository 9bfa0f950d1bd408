"""Issue 16's pure logic: handler config and probing, the pod CIDR and CNI template, cgroup
limits and counters (v1 and v2 layouts in temp dirs), netns counters, the CRIU probe, the
checkpoint archive, pod resize validation, the metric descriptors."""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from pycri import cgroups
from pycri.cgroups import CgroupLimits, CgroupWriteError, apply_limits, read_counters
from pycri.config import Config, ConfigError, load
from pycri.errors import InvalidArgument
from pycri.net import pod_cidr
from pycri.net.counters import parse_net_dev
from pycri.net.pod_cidr import PodCIDR, PodCIDRError, parse_pod_cidr, render
from pycri.oci import checkpoint_archive, criu, runtime_handlers
from pycri.oci.runtime_handlers import (
    RuntimeHandlers,
    UnknownHandlerError,
    UnusableHandlerError,
)
from pycri.paths import Paths
from pycri.service import pod_metrics
from pycri.service.sandbox_update import applied_resources, validate_limits
from pycri.store import checkpoint

# --- config --------------------------------------------------------------------------------


def test_default_handlers_are_runc_and_crun() -> None:
    config = Config()
    assert config.default_runtime_handler == "runc"
    assert {n: h.binary for n, h in config.runtimes.items()} == {"runc": "runc", "crun": "crun"}


def test_runtime_tables_add_to_the_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'default_runtime_handler = "kata"\n'
        '[runtimes.kata]\nruntime_type = "io.containerd.kata.v2"\n'
        '[runtimes.runc]\nbinary = "/usr/local/bin/runc"\noptions = { NoPivotRoot = true }\n'
    )
    config = load(cfg)
    assert set(config.runtimes) == {"runc", "crun", "kata"}
    assert config.runtimes["runc"].options == {"NoPivotRoot": True}
    assert config.runtimes["kata"].runtime_type == "io.containerd.kata.v2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('cgroup_driver = "systemd"', "systemd' is not supported: pycri manages pod cgroups"),
        ('default_runtime_handler = "gvisor"', "'gvisor' is not a [runtimes.NAME] table"),
        ("[runtimes.x]\nruntime_type = 'runc'", "is not a containerd runtime type"),
        ("[runtimes.x]\noptions = { BinaryName = 'y' }", "the OCI binary is 'runtimes.x.binary'"),
        ("[runtimes.x]\noptions = { IoUid = 'root' }", "'runtimes.x.options.IoUid': expected int"),
        ("[runtimes.x]\noptions = { SystemdCgroup = true }", "systemd cgroup driver"),
        ("[runtimes.x]\noptions = { Root = 'rel' }", "'runtimes.x.options.Root'"),
        ("[runtimes.k]\nruntime_type = 'io.containerd.kata.v2'\nbinary = 'k'", "runc shim only"),
        ("[runtimes.x]\nbinray = 'runc'", "unknown config key 'runtimes.x.binray'"),
        ("runtimes = 3", "'runtimes': expected a table"),
        ("cni_conf_template = 'rel.conflist'", "'cni_conf_template'"),
    ],
)
def test_bad_runtime_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert message in str(err.value)


# --- runtime handlers ----------------------------------------------------------------------


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def fake_binaries(tmp_path: Path) -> dict[str, str]:
    return {
        "rro": _script(
            tmp_path / "ocirt-rro",
            'case "$1" in features) echo \'{"mountOptions": ["ro", "rro"]}\';; '
            "--version) echo 'ocirt version 1';; esac\n",
        ),
        "plain": _script(
            tmp_path / "ocirt-plain",
            'case "$1" in features) echo \'{"mountOptions": ["ro"]}\';; esac\n',
        ),
        "nofeatures": _script(tmp_path / "ocirt-old", 'echo "unknown command $1" >&2; exit 1\n'),
        "crun": _script(
            tmp_path / "crun", 'case "$1" in --version) echo "crun version 1.8.1";; esac\n'
        ),
    }


def _handlers(tmp_path: Path, binaries: dict[str, str], **extra: str) -> RuntimeHandlers:
    text = "".join(f'[runtimes.{name}]\nbinary = "{path}"\n' for name, path in binaries.items())
    text += "".join(f"[runtimes.{k}]\n{v}\n" for k, v in extra.items())
    cfg = tmp_path / "handlers.toml"
    cfg.write_text(text)
    return RuntimeHandlers(load(cfg), paths=Paths(root=tmp_path / "r", state=tmp_path / "s"))


async def test_probe_finds_binaries_and_asks_them_for_rro(
    tmp_path: Path, fake_binaries: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_handlers, "kernel_has_mount_setattr", lambda: True)
    monkeypatch.setattr(runtime_handlers, "hybrid_v2_controllers", lambda: [])
    handlers = _handlers(
        tmp_path,
        {k: fake_binaries[k] for k in ("rro", "plain", "nofeatures")},
        missing='binary = "/nonexistent/ocirt"',
        kata='runtime_type = "io.containerd.pycri-nope.v2"',
    )
    await handlers.probe()
    rro = handlers.resolve("rro")
    assert rro.features.recursive_read_only_mounts is True
    assert rro.features.user_namespaces is False
    assert rro.options is not None and rro.options.root == str(tmp_path / "s/runtimes/rro")
    assert rro.binary == fake_binaries["rro"]
    assert handlers.resolve("plain").features.recursive_read_only_mounts is False
    assert (
        "no 'features' command"
        in (handlers.resolve("nofeatures").features.notes["recursiveReadOnlyMounts"])
    )
    with pytest.raises(UnusableHandlerError, match="/nonexistent/ocirt"):
        handlers.resolve("missing")
    with pytest.raises(UnusableHandlerError, match="containerd-shim-pycri-nope-v2 not found"):
        handlers.resolve("kata")
    with pytest.raises(UnknownHandlerError, match="'gvisor' is not configured"):
        handlers.resolve("gvisor")
    assert handlers.resolve("").name == "runc"  # the default
    usable = {h.name for h in handlers.usable()}
    assert {"rro", "plain", "nofeatures"} <= usable and not usable & {"missing", "kata"}


async def test_rro_needs_the_kernel_too(
    tmp_path: Path, fake_binaries: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_handlers, "kernel_has_mount_setattr", lambda: False)
    handlers = _handlers(tmp_path, {"rro": fake_binaries["rro"]})
    await handlers.probe()
    features = handlers.resolve("rro").features
    assert features.recursive_read_only_mounts is False
    assert "mount_setattr" in features.notes["recursiveReadOnlyMounts"]


async def test_crun_in_hybrid_cgroup_mode_with_v2_controllers_is_unusable(
    tmp_path: Path, fake_binaries: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_handlers, "hybrid_v2_controllers", lambda: ["hugetlb"])
    handlers = _handlers(tmp_path, {"crun": fake_binaries["crun"], "rro": fake_binaries["rro"]})
    await handlers.probe()
    with pytest.raises(UnusableHandlerError, match=r"crun version 1.8.1 refuses .*\(hugetlb\)"):
        handlers.resolve("crun")
    handlers.resolve("rro")  # other binaries are not concerned


def test_the_mount_setattr_probe_answers_on_this_kernel() -> None:
    assert runtime_handlers.kernel_has_mount_setattr() is (
        tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (5, 12)
    )


def test_hybrid_v2_controllers(tmp_path: Path) -> None:
    assert cgroups.hybrid_v2_controllers(tmp_path) == []
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    assert cgroups.hybrid_v2_controllers(tmp_path) == ["hugetlb"]
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")  # pure v2
    assert cgroups.hybrid_v2_controllers(tmp_path) == []


# --- pod CIDR and the CNI template ---------------------------------------------------------

TEMPLATE = (
    '{"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "bridge", "ipam": '
    '{"type": "host-local", "ranges": [[{"subnet": "{{.PodCIDR}}"}]]}, "all": "{{.PodCIDRRanges}}"}]}'
)


def test_parse_pod_cidr() -> None:
    assert parse_pod_cidr("10.244.1.0/24") == ("10.244.1.0/24",)
    assert parse_pod_cidr(" 10.244.1.7/24 , fd00:1::/64") == ("10.244.1.0/24", "fd00:1::/64")
    for bad in ("10.244.1.0", "x/24", "10.0.0.0/24,10.1.0.0/24", ""):
        with pytest.raises(PodCIDRError):
            parse_pod_cidr(bad)


def test_render_fills_the_placeholders_and_checks_the_result() -> None:
    text = render(TEMPLATE, ("10.1.0.0/24", "fd00::/64"), source="t")
    assert '"subnet": "10.1.0.0/24"' in text and '"all": "10.1.0.0/24,fd00::/64"' in text
    with pytest.raises(PodCIDRError, match="not JSON"):
        render("{{.PodCIDR}}", ("10.1.0.0/24",), source="t")
    with pytest.raises(PodCIDRError):
        render('{"cniVersion": "1.0.0", "name": "t"}', ("10.1.0.0/24",), source="t")


async def test_update_writes_the_config_and_remembers_the_cidr(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.write_text(TEMPLATE)
    conf_dir = tmp_path / "net.d"
    state = tmp_path / "runtime-config.json"
    node = PodCIDR(state_file=state, conf_dir=conf_dir, template=template)
    applied = await node.update("10.2.0.0/24")
    target = conf_dir / pod_cidr.GENERATED_NAME
    assert applied.written == str(target) and '"10.2.0.0/24"' in target.read_text()
    assert [p.name for p in conf_dir.iterdir()] == [pod_cidr.GENERATED_NAME]  # no temp left
    await node.update("10.3.0.0/24")  # its own file is rewritten
    assert '"10.3.0.0/24"' in target.read_text()
    again = PodCIDR(state_file=state, conf_dir=conf_dir, template=template)
    await again.load()
    assert again.value == "10.3.0.0/24"
    (conf_dir / "00-operator.conflist").write_text("{}")
    skipped = await again.update("10.4.0.0/24")
    assert skipped.written == "" and "00-operator.conflist" in skipped.skipped
    assert '"10.3.0.0/24"' in target.read_text() and again.value == "10.4.0.0/24"


async def test_update_without_template_only_records(tmp_path: Path) -> None:
    node = PodCIDR(state_file=tmp_path / "rc.json", conf_dir=tmp_path / "net.d", template=None)
    applied = await node.update("10.5.0.0/16")
    assert applied.written == "" and not (tmp_path / "net.d").exists()
    assert checkpoint.read_sync(tmp_path / "rc.json")["pod_cidr"] == "10.5.0.0/16"


# --- cgroup limits and counters ------------------------------------------------------------


def _v1_tree(root: Path, rel: str) -> None:
    files = {
        "cpu": {
            "cpu.shares": "1024",
            "cpu.cfs_quota_us": "-1",
            "cpu.cfs_period_us": "100000",
            "cpu.stat": "nr_periods 7\nnr_throttled 2\nthrottled_time 3000000000\n",
        },
        "cpuacct": {
            "cpuacct.usage": "2500000000",
            "cpuacct.usage_user": "2000000000",
            "cpuacct.usage_sys": "500000000",
        },
        "memory": {
            "memory.limit_in_bytes": "9223372036854771712",
            "memory.usage_in_bytes": "10485760",
            "memory.max_usage_in_bytes": "20971520",
            "memory.failcnt": "1",
            "memory.stat": "cache 1\ntotal_cache 4194304\ntotal_rss 5242880\n"
            "total_inactive_file 1048576\ntotal_swap 0\n"
            "total_mapped_file 65536\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        },
        "pids": {"pids.current": "4", "cgroup.procs": "10\n11\n"},
        "cpuset": {"cpuset.cpus": "0-1", "cpuset.mems": "0"},
    }
    for controller, entries in files.items():
        d = root / controller / rel
        d.mkdir(parents=True)
        for name, text in entries.items():
            (d / name).write_text(text)


def test_read_counters_v1(tmp_path: Path) -> None:
    _v1_tree(tmp_path, "pycri/c1")
    c = read_counters("/pycri/c1", root=tmp_path)
    assert c is not None
    assert (c.cpu_usage_ns, c.cpu_user_ns, c.cpu_system_ns) == (2_500_000_000, 2 * 10**9, 5 * 10**8)
    assert (c.cfs_periods, c.cfs_throttled_periods, c.cfs_throttled_ns) == (7, 2, 3 * 10**9)
    assert c.memory_usage == 10 << 20 and c.memory_working_set == 9 << 20
    assert (c.memory_rss, c.memory_cache, c.memory_mapped_file) == (5 << 20, 4 << 20, 65536)
    assert (c.memory_failcnt, c.oom_kills, c.processes, c.threads) == (1, 3, 2, 4)
    assert (c.memory_limit, c.cpu_quota, c.cpu_shares) == (0, 0, 1024)  # unlimited → 0
    assert read_counters("/pycri/gone", root=tmp_path) is None


def test_read_counters_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    d = tmp_path / "pycri" / "c1"
    d.mkdir(parents=True)
    for name, text in {
        "cpu.stat": "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"
        "nr_periods 4\nnr_throttled 1\nthrottled_usec 2000000\n",
        "memory.current": "8388608",
        "memory.peak": "16777216",
        "memory.max": "67108864",
        "memory.stat": "anon 3145728\nfile 2097152\nfile_mapped 4096\ninactive_file 1048576\n",
        "memory.events": "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n",
        "memory.swap.current": "0",
        "pids.current": "3",
        "cgroup.procs": "1\n2\n3\n",
        "cpu.max": "50000 100000",
        "cpu.weight": "39",
    }.items():
        (d / name).write_text(text)
    c = read_counters("/pycri/c1", root=tmp_path)
    assert c is not None
    assert c.cpu_usage_ns == 1_500_000_000 and c.cfs_throttled_ns == 2 * 10**9
    assert c.memory_working_set == 7 << 20 and c.memory_rss == 3 << 20
    assert (c.memory_failcnt, c.oom_kills, c.processes) == (5, 1, 3)
    assert (c.cpu_quota, c.cpu_period, c.memory_limit) == (50_000, 100_000, 64 << 20)
    # weight 39 is what kubelet writes for 1024 shares; the way back loses the rounding
    assert cgroups.shares_to_weight(1024) == 39 and c.cpu_shares == 998


def test_apply_limits_v1_writes_period_before_quota_and_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _v1_tree(tmp_path, "kubepods/pod1")
    limits = CgroupLimits(
        cpu_shares=512, cpu_quota=50_000, cpu_period=200_000, memory_limit=1 << 27
    )
    apply_limits("/kubepods/pod1", limits, root=tmp_path)
    cpu = tmp_path / "cpu/kubepods/pod1"
    assert (cpu / "cpu.shares").read_text() == "512"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "200000"
    assert (tmp_path / "memory/kubepods/pod1/memory.limit_in_bytes").read_text() == str(1 << 27)
    # A write the kernel refuses (a cpuset outside the parent's: EINVAL) puts the others back.
    real_write = Path.write_text

    def refusing(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self.name == "cpuset.cpus":
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_text", refusing)
    with pytest.raises(CgroupWriteError, match=r"cpuset\.cpus = 7: Invalid argument"):
        apply_limits(
            "/kubepods/pod1", CgroupLimits(cpu_shares=2048, cpuset_cpus="7"), root=tmp_path
        )
    assert (cpu / "cpu.shares").read_text() == "512"
    with pytest.raises(FileNotFoundError):
        apply_limits("/kubepods/nope", limits, root=tmp_path)


def test_apply_limits_v2_file_names(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    d = tmp_path / "kubepods" / "pod1"
    d.mkdir(parents=True)
    for name in ("cpu.weight", "cpu.max", "memory.max"):
        (d / name).write_text("x")
    apply_limits(
        "/kubepods/pod1",
        CgroupLimits(cpu_shares=1024, cpu_quota=-1, memory_limit=-1),
        root=tmp_path,
    )
    assert (d / "cpu.weight").read_text() == str(cgroups.shares_to_weight(1024))
    assert (d / "cpu.max").read_text() == "max 100000"
    assert (d / "memory.max").read_text() == "max"


# --- network counters ----------------------------------------------------------------------

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:  123456     789    2    3    0     0          0         0    65432     321    4    5    0     0       0          0
"""


def test_parse_net_dev() -> None:
    lo, eth0 = parse_net_dev(NET_DEV)
    assert lo.name == "lo"
    assert (eth0.name, eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors, eth0.rx_dropped) == (
        "eth0",
        123456,
        789,
        2,
        3,
    )
    assert (eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped) == (65432, 321, 4, 5)
    assert parse_net_dev("garbage\n\nx: 1 2\n") == []


# --- metrics -------------------------------------------------------------------------------


def test_descriptors_use_kubelets_label_keys() -> None:
    by_name = {d.name: list(d.label_keys) for d in pod_metrics.DESCRIPTORS}
    assert len(by_name) == len(pod_metrics.DESCRIPTORS)  # no duplicate names
    for name, keys in by_name.items():
        assert keys[:3] == ["id", "name", "image"], name
        # kubelet adds namespace, pod and container itself: a runtime sending them would clash
        assert not {"namespace", "pod", "container"} & set(keys), name
    assert by_name["container_cpu_usage_seconds_total"][3:] == ["cpu"]
    assert by_name["container_network_transmit_bytes_total"][3:] == ["interface"]
    for needed in (
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_fs_usage_bytes",
        "container_processes",
        "container_network_receive_errors_total",
    ):
        assert needed in by_name


# --- CRIU and the checkpoint archive -------------------------------------------------------


async def test_criu_status(tmp_path: Path) -> None:
    missing = await criu.criu_status(str(tmp_path / "nope"))
    assert not missing.usable and "criu is not installed" in missing.problem
    old = _script(tmp_path / "criu-old", 'echo "Version: 3.15"\n')
    assert "too old" in (await criu.criu_status(old)).problem
    broken = _script(
        tmp_path / "criu-broken",
        'case "$1" in --version) echo "Version: 3.17.1";; '
        'check) echo "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds"; exit 1;; esac\n',
    )
    status = await criu.criu_status(broken)
    assert not status.usable and status.version == "3.17.1"
    assert "check fails on this kernel" in status.problem and "vDSO area bounds" in status.problem
    good = _script(
        tmp_path / "criu-good",
        'case "$1" in --version) echo "Version: 3.19";; check) echo "Looks good.";; esac\n',
    )
    assert (await criu.criu_status(good)).usable


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (mknod) and trusted xattrs need root")
def test_archive_layout_is_what_checkpointctl_reads(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "new").write_text("x")
    os.link(upper / "etc" / "new", upper / "etc" / "hardlink")
    (upper / "opaque").mkdir()
    os.setxattr(upper / "opaque", "trusted.overlay.opaque", b"y")
    os.mknod(upper / "etc" / "gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    images = tmp_path / "images"
    images.mkdir()
    (images / "inventory.img").write_bytes(b"\0")
    diff = tmp_path / "diff.tar"
    checkpoint_archive.write_rootfs_diff(upper, diff)
    with tarfile.open(diff) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {
        "etc",
        "etc/new",
        "etc/hardlink",
        "etc/.wh.gone",
        "opaque",
        "opaque/.wh..wh..opq",
    }
    assert members["etc/hardlink"].islnk() or members["etc/new"].islnk()
    location = tmp_path / "out.tar"
    checkpoint_archive.write_archive(
        location,
        images_dir=images,
        documents={"spec.dump": b"{}", "config.dump": b"{}", "status.dump": b"{}"},
        rootfs_diff=diff,
        files={"container.log": tmp_path / "missing.log"},
    )
    with tarfile.open(location) as tar:
        assert set(tar.getnames()) == {
            "checkpoint",
            "checkpoint/inventory.img",
            "spec.dump",
            "config.dump",
            "status.dump",
            "rootfs-diff.tar",
        }
    assert stat.S_IMODE(location.stat().st_mode) == 0o600
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_archive_leaves_nothing(tmp_path: Path) -> None:
    location = tmp_path / "out.tar"
    with pytest.raises(FileNotFoundError):
        checkpoint_archive.write_archive(
            location,
            images_dir=tmp_path / "no-images",
            documents={},
            rootfs_diff=tmp_path / "no-diff",
            files={},
        )
    assert list(tmp_path.iterdir()) == []


# --- pod resize ----------------------------------------------------------------------------


def test_validate_limits() -> None:
    limits = validate_limits(
        api_pb2.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=64 << 20)
    )
    assert limits == CgroupLimits(cpu_shares=512, memory_limit=64 << 20)
    assert applied_resources(limits) == {"cpu": {"shares": 512}, "memory": {"limit": 64 << 20}}
    for bad in (
        {"cpu_shares": 1},
        {"cpu_period": 999},
        {"cpu_quota": 10},
        {"memory_limit_in_bytes": -5},
        {"memory_swap_limit_in_bytes": 1 << 30},
    ):
        with pytest.raises(InvalidArgument):
            validate_limits(api_pb2.LinuxContainerResources(**bad))  # type: ignore[arg-type]
    assert validate_limits(api_pb2.LinuxContainerResources(cpu_quota=-1)).cpu_quota == -1
