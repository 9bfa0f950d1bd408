"""Issue 15, the pure parts: what is refused before anything is made (names, sizes, paths,
resources, pod files), opening beneath a directory without links, the bounded quoting of
request values, the sandbox's closing fence, and the undo journal's retries."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from pycri.cgroups import remove_cgroup
from pycri.containerd.shims import shims
from pycri.errors import FailedPrecondition, NotFound, quote
from pycri.events.types import Kind
from pycri.fsutil import check_beneath, make_dirs, open_beneath, remove_empty_dirs
from pycri.gc import daemon_running
from pycri.oci.host import HostFeatures, hugepage_size_name, parse_cpuset
from pycri.oci.resources import MIN_MEMORY_BYTES, validate_linux_resources
from pycri.oci.validation import (
    MAX_ANNOTATIONS_BYTES,
    MAX_LABEL_BYTES,
    MAX_LABELS_BYTES,
    validate_annotations,
    validate_cgroup_parent,
    validate_labels,
    validate_log_path,
    validate_mount,
)
from pycri.paths import Paths
from pycri.service.rollback import Rollback
from pycri.service.sandbox_files import validate_dns_config, validate_hostname
from pycri.service.undo import Intent, UndoJournal, read_intents
from pycri.store.index import IdIndex
from pycri.store.sandbox import SandboxState
from tests.unit.fakes import make_sandbox

HOST = HostFeatures(
    online_cpus=frozenset({0, 1}),
    online_mems=frozenset({0}),
    hugepage_sizes=frozenset({"2MB", "1GB"}),
    cgroup_v2=False,
)

# ------------------------------------------------------------------------ names and sizes


def test_quote_cuts_long_values_and_says_how_long() -> None:
    assert quote("abc") == "'abc'"
    quoted = quote("x" * 100_000)
    assert len(quoted) < 200 and "100000 characters" in quoted


def test_id_lookups_never_echo_a_huge_id() -> None:
    index: IdIndex[str] = IdIndex("container")
    index.add("a" * 64, "it")
    assert index.find("a" * 64 + "b") is None  # longer than any ID: no scan
    with pytest.raises(NotFound) as err:
        index.get("x" * 15_000_000)
    assert len(err.value.message) < 300


def test_label_and_annotation_limits() -> None:
    validate_labels({"k": "v" * (MAX_LABEL_BYTES - 1)}, what="pod")
    with pytest.raises(ValueError, match="key and value"):
        validate_labels({"k": "v" * MAX_LABEL_BYTES}, what="pod")
    with pytest.raises(ValueError, match="must not be empty"):
        validate_labels({"": "x"}, what="pod")
    many = {f"k{i}": "v" * 4000 for i in range(MAX_LABELS_BYTES // 4000 + 1)}
    with pytest.raises(ValueError, match="in total"):
        validate_labels(many, what="pod")
    validate_annotations({"a": "v" * (MAX_ANNOTATIONS_BYTES - 1)}, what="c")
    with pytest.raises(ValueError, match="in total"):  # the image spec's count too
        validate_annotations(
            {"a": "v" * (MAX_ANNOTATIONS_BYTES // 2)}, {"b": "v" * (2**17)}, what="c"
        )


@pytest.mark.parametrize(
    "parent",
    ["/../../../../tmp/x", "../../tmp/y", "/pycri-test/../../x", "/a/./b", "/a//b", "a\nb"],
)
def test_escaping_cgroup_parents_are_refused(parent: str) -> None:
    with pytest.raises(ValueError, match="cgroup_parent"):
        validate_cgroup_parent(parent)


@pytest.mark.parametrize("parent", ["", "/", "/kubepods/burstable/pod1", "kubepods", "/a/b/"])
def test_plain_cgroup_parents_pass(parent: str) -> None:
    validate_cgroup_parent(parent)


@pytest.mark.parametrize(
    "path", ["/", "/proc", "/proc/sys", "/proc/sys/kernel", "/proc/1/root", "//proc/sys/"]
)
def test_mounts_over_root_or_proc_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="container_path"):
        validate_mount(api_pb2.Mount(container_path=path, host_path="/tmp"))


def test_the_proc_files_runc_allows_may_be_mounted() -> None:
    validate_mount(api_pb2.Mount(container_path="/proc/cpuinfo", host_path="/tmp/cpuinfo"))
    with pytest.raises(ValueError, match="NUL"):
        validate_mount(api_pb2.Mount(container_path="/data", host_path="/tmp/a\0b"))


@pytest.mark.parametrize("log_path", [".", "a/./b.log", "a//b.log", "dir/", "x\0y"])
def test_log_paths_must_name_a_file(log_path: str) -> None:
    with pytest.raises(ValueError, match="log_path"):
        validate_log_path(log_path)


# ------------------------------------------------------------------------ resources


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cpu_shares": -1}, "cpu_shares"),
        ({"cpu_period": 100}, "cpu_period"),
        ({"cpu_period": 2_000_000}, "cpu_period"),
        ({"cpu_quota": 5}, "cpu_quota"),
        ({"cpu_quota": -2}, "cpu_quota"),
        ({"memory_limit_in_bytes": 1}, "below the minimum"),
        ({"memory_limit_in_bytes": -1}, "must not be negative"),
        ({"memory_swap_limit_in_bytes": -2}, "memory_swap"),
        ({"memory_limit_in_bytes": 64 << 20, "memory_swap_limit_in_bytes": 32 << 20}, "below"),
        ({"oom_score_adj": 99999}, "oom_score_adj"),
        ({"oom_score_adj": -1001}, "oom_score_adj"),
        ({"cpuset_cpus": "bogus"}, "cpuset_cpus"),
        ({"cpuset_cpus": "3-1"}, "backwards"),
        ({"cpuset_cpus": "0-7"}, "does not have"),
        ({"cpuset_mems": "1"}, "does not have"),
    ],
)
def test_resources_runc_would_refuse(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_linux_resources(api_pb2.LinuxContainerResources(**fields), host=HOST)  # type: ignore[arg-type]


def test_hugepages_and_unified_are_checked_against_the_node() -> None:
    bad = api_pb2.LinuxContainerResources(
        hugepage_limits=[api_pb2.HugepageLimit(page_size="bogus")]
    )
    with pytest.raises(ValueError, match="not a size"):
        validate_linux_resources(bad, host=HOST)
    odd = api_pb2.LinuxContainerResources(hugepage_limits=[api_pb2.HugepageLimit(page_size="64KB")])
    with pytest.raises(ValueError, match="not one this node has"):
        validate_linux_resources(odd, host=HOST)
    unified = api_pb2.LinuxContainerResources(unified={"memory.high": "1"})
    with pytest.raises(ValueError, match="cgroup v2"):
        validate_linux_resources(unified, host=HOST)
    validate_linux_resources(unified, host=HostFeatures(cgroup_v2=True))


def test_what_kubelet_sends_passes() -> None:
    validate_linux_resources(
        api_pb2.LinuxContainerResources(
            cpu_period=100000,
            cpu_quota=50000,
            cpu_shares=2,
            memory_limit_in_bytes=MIN_MEMORY_BYTES,
            memory_swap_limit_in_bytes=-1,
            oom_score_adj=-997,
            cpuset_cpus="0-1",
            cpuset_mems="0",
            hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=0)],
        ),
        host=HOST,
    )


def test_cpusets_and_page_size_names() -> None:
    assert parse_cpuset("0-2,5") == {0, 1, 2, 5}
    assert (hugepage_size_name(2048), hugepage_size_name(1048576), hugepage_size_name(64)) == (
        "2MB",
        "1GB",
        "64KB",
    )


# ------------------------------------------------------------------------ pod files


@pytest.mark.parametrize(
    "hostname", ["evil\n6.6.6.6 registry.k8s.io", "h" * 65, "-x", "a..b", "under_score", "sp ace"]
)
def test_bad_hostnames_are_refused(hostname: str) -> None:
    with pytest.raises(ValueError, match="hostname"):
        validate_hostname(hostname)


def test_fqdn_hostnames_up_to_64_pass() -> None:
    validate_hostname("web-0.web.default.svc.cluster.local")
    validate_hostname("a" * 31 + "." + "b" * 32)


@pytest.mark.parametrize(
    "dns",
    [
        api_pb2.DNSConfig(servers=["10.0.0.1\nnameserver 6.6.6.6"]),
        api_pb2.DNSConfig(servers=["resolver.example"]),
        api_pb2.DNSConfig(options=["x\nnameserver 7.7.7.7"]),
        api_pb2.DNSConfig(options=["a b"]),
        api_pb2.DNSConfig(searches=["a.example\nnameserver 8.8.8.8"]),
        api_pb2.DNSConfig(searches=[f"s{i}.example" for i in range(33)]),
        api_pb2.DNSConfig(searches=["x" * 62 + f".{i:02d}" for i in range(32)]),
    ],
)
def test_bad_dns_configs_are_refused(dns: api_pb2.DNSConfig) -> None:
    with pytest.raises(ValueError, match="dns_config"):
        validate_dns_config(dns)


def test_kubelets_dns_config_passes() -> None:
    validate_dns_config(
        api_pb2.DNSConfig(
            servers=["10.96.0.10", "fd00::a"],
            searches=["default.svc.cluster.local", "svc.cluster.local", "cluster.local."],
            options=["ndots:5", "single-request-reopen", "timeout:2"],
        )
    )


# ------------------------------------------------------------------------ files beneath a dir


def test_open_beneath_refuses_links_anywhere_below(tmp_path: Path) -> None:
    logs, victim = tmp_path / "logs", tmp_path / "victim"
    (logs / "sub").mkdir(parents=True)
    victim.mkdir()
    (victim / "t").write_text("precious")
    (logs / "link.log").symlink_to(victim / "t")
    (logs / "dirlink").symlink_to(victim)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    for rel in ("link.log", "dirlink/new.log"):
        with pytest.raises(OSError):
            open_beneath(str(logs), rel, flags)
        with pytest.raises(OSError):
            check_beneath(str(logs), rel)
    with pytest.raises(ValueError):
        open_beneath(str(logs), "../victim/t", flags)
    fd = open_beneath(str(logs), "sub/ok.log", flags)
    os.close(fd)
    check_beneath(str(logs), "sub/ok.log")
    with pytest.raises(FileNotFoundError):
        check_beneath(str(logs), "missing/x.log")
    assert (victim / "t").read_text() == "precious" and sorted(os.listdir(victim)) == ["t"]


def test_make_dirs_reports_what_it_made_and_undoes_only_that(tmp_path: Path) -> None:
    (tmp_path / "have").mkdir()
    made = make_dirs(tmp_path / "have" / "a" / "b")
    assert made == [tmp_path / "have" / "a", tmp_path / "have" / "a" / "b"]
    (tmp_path / "have" / "a" / "kept").mkdir()  # put there since: keeps "a"
    remove_empty_dirs(made)
    assert (tmp_path / "have" / "a").is_dir() and not (tmp_path / "have" / "a" / "b").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        make_dirs(tmp_path / "file" / "sub")
    with pytest.raises(OSError):
        make_dirs(tmp_path / "file")


# ------------------------------------------------------------------------ cgroups and shims


def test_remove_cgroup_removes_every_hierarchys_dir(tmp_path: Path) -> None:
    for hierarchy in ("cpu", "memory"):
        (tmp_path / hierarchy / "pycri" / "abc").mkdir(parents=True)
    remove_cgroup("/pycri/abc", root=tmp_path)
    assert not list(tmp_path.glob("*/pycri/abc"))
    assert (tmp_path / "cpu" / "pycri").is_dir()  # the parent stays
    remove_cgroup("/pycri/abc", root=tmp_path)  # gone: fine


def test_shims_are_found_by_their_command_line(tmp_path: Path) -> None:
    def proc(pid: int, *argv: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")

    proc(
        10,
        "/usr/bin/containerd-shim-runc-v2",
        "-namespace",
        "k8s.io",
        "-id",
        "s1",
        "-address",
        "/a",
    )
    proc(11, "/usr/bin/containerd-shim-runc-v2", "-id", "s2", "-address", "/other")
    proc(12, "sleep", "-id", "s1", "-address", "/a")
    (tmp_path / "self").mkdir()
    assert shims("/a", proc=tmp_path) == {10: "s1"}


def test_daemon_running_is_the_state_lock(tmp_path: Path) -> None:
    import fcntl

    paths = Paths(root=tmp_path / "r", state=tmp_path)
    assert not daemon_running(paths)
    fd = os.open(paths.lock_file, os.O_RDWR | os.O_CREAT)
    assert not daemon_running(paths)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert daemon_running(paths)
    finally:
        os.close(fd)
    assert not daemon_running(paths)


# ------------------------------------------------------------------------ the closing fence


async def test_a_closing_pod_refuses_creates_and_waits_for_those_under_way(tmp_path: Path) -> None:
    sandbox = make_sandbox(tmp_path)
    sandbox.check_open()
    sandbox.creates.enter()
    await sandbox.begin_closing()
    with pytest.raises(FailedPrecondition, match="being stopped or removed"):
        sandbox.check_open()
    idle = asyncio.create_task(sandbox.creates.wait_idle())
    await asyncio.sleep(0.01)
    assert not idle.done()  # Remove waits for the create under way
    sandbox.creates.leave()
    await asyncio.wait_for(idle, 1)
    stopped = make_sandbox(tmp_path, sandbox_id="t" * 64, state=SandboxState.NOTREADY, pid=0)
    with pytest.raises(FailedPrecondition, match="not ready"):
        stopped.check_open()


# ------------------------------------------------------------------------ the undo journal


def _intent(object_id: str = "a" * 64) -> Intent:
    return Intent(kind=Kind.SANDBOX, object_id=object_id, cgroups_path="/p/x", created_at=1.0)


class FlakyCleanup:
    """Fails ``failures`` times (containerd down), then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[str] = []

    async def __call__(self, intent: Intent) -> None:
        self.calls.append(intent.object_id)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("containerd is down")


async def test_the_journal_retries_until_the_cleanup_succeeds(tmp_path: Path) -> None:
    cleanup = FlakyCleanup(failures=2)
    journal = UndoJournal(
        directory=tmp_path / "creating", cleanup=cleanup, initial_delay_s=0.01, check_interval=0.01
    )
    journal.start()
    try:
        await journal.begin(_intent())
        assert [i.object_id for i in read_intents(tmp_path / "creating")] == ["a" * 64]
        journal.finish_later(_intent())
        assert len(journal) == 1
        for _ in range(300):
            if not len(journal):
                break
            await asyncio.sleep(0.01)
        assert cleanup.calls == ["a" * 64] * 3
        assert len(journal) == 0 and read_intents(tmp_path / "creating") == []
    finally:
        await journal.stop()


async def test_rollback_hands_failed_undo_to_the_journal_and_drops_intents_otherwise(
    tmp_path: Path,
) -> None:
    journal = UndoJournal(directory=tmp_path / "creating", cleanup=FlakyCleanup(failures=0))

    def failing() -> None:
        raise ConnectionError("containerd is down")

    with pytest.raises(RuntimeError):
        async with Rollback(what="sandbox a") as undo:
            await undo.journal(journal, _intent("a" * 64))
            undo.push("delete record", failing)
            raise RuntimeError("the create failed")
    assert len(journal) == 1  # left for the retries
    with pytest.raises(RuntimeError):
        async with Rollback(what="sandbox b") as undo:
            await undo.journal(journal, _intent("b" * 64))
            undo.push("remove files", lambda: None)
            raise RuntimeError("the create failed")
    async with Rollback(what="sandbox c") as undo:
        await undo.journal(journal, _intent("c" * 64))
        undo.commit()
    assert [i.object_id for i in read_intents(tmp_path / "creating")] == ["a" * 64]
    await journal.stop()
