"""Issue 15: a property-based fuzz of every CRI RPC on a live daemon (hypothesis).

Each example is a batch of requests sent at once: random messages built from the proto
descriptors (strings drawn from pools of hostile values: real and near IDs, escaping paths,
links, newlines, oversized values), mutations of valid pod and container configs, raw
random bytes, and byte-level mutations (flips, truncations, appended garbage) of valid
encodings. Properties:

- every answer is a gRPC status within the call's deadline, never INTERNAL, and UNKNOWN only
  when it is containerd's or runc's own error passed on (its message says ``containerd``);
- the daemon stays up, answers ``Version`` after every batch, and logs no traceback;
- afterwards containerd holds no container, task or active snapshot that pycri does not
  list, and no ``pycri-*`` lease;
- nothing was written outside pycri's root and state and the directories the requests
  named: a victim directory that links in the log directory point to is untouched, no new
  entry appears in ``/``, ``/etc`` or ``/var`` that no request named, and no cgroup appears
  outside the daemon's own parent.

ExecSync, like the other waiting RPCs, may run into the call's deadline (its command may
run longer); its process is then killed and deleted.
The fuzz stays within about a minute: ``EXAMPLES`` batches of up to ``BATCH`` requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pycri.cgroups import CGROUP_ROOT, is_v2
from tests.integration.helpers import (
    BUSYBOX_REF,
    PAUSE_REF,
    Daemon,
    containerd_of,
    import_test_images,
)
from tests.integration.pods import container_config, pod_config

EXAMPLES = 90
BATCH = 36
CALL_TIMEOUT = 20.0
WAIT_TIMEOUT = 3.0  # for the RPCs that may wait (MAY_WAIT): a batch must not stall on them
EVENTS_TIMEOUT = 0.3  # a valid GetContainerEvents streams until the client hangs up
SERVICES = {
    "runtime.v1.RuntimeService": api_pb2.DESCRIPTOR.services_by_name["RuntimeService"],
    "runtime.v1.ImageService": api_pb2.DESCRIPTOR.services_by_name["ImageService"],
}
METHODS = [
    (f"/{service}/{method.name}", method)
    for service, descriptor in SERVICES.items()
    for method in descriptor.methods
]
# RPCs that may legitimately wait longer than a call's deadline: a Stop with a long timeout
# on a process that ignores SIGTERM, the event stream, pulls, and exec (see the docstring).
MAY_WAIT = {
    "StopContainer",
    "StopPodSandbox",
    "RemoveContainer",
    "RemovePodSandbox",
    "ExecSync",
    "GetContainerEvents",
    "PullImage",
}
TYPED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DATA_LOSS,
}
BIG = ("n" * 300, "v" * 5000, "a" * 300_000)


@dataclass
class World:
    """What the strategies draw from: the live daemon's IDs and the fuzz's own paths."""

    daemon: Daemon
    base: Path  # the requested log and host dirs live here
    victim: Path  # outside it; links inside point here
    pod_ids: list[str] = field(default_factory=list)
    container_ids: list[str] = field(default_factory=list)
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return self.pod_ids + self.container_ids

    def pick_id(self, index: int, cut: int, kind: str = "") -> str:
        pool = {"pod": self.pod_ids, "container": self.container_ids}.get(kind) or self.ids
        real = pool[index % len(pool)] if pool else "0" * 64
        return real if cut == 0 else real[:cut]

    def paths(self) -> list[str]:
        b = str(self.base)
        return [
            f"{b}/logs",
            f"{b}/logs/p1",
            f"{b}/logs/p2",
            f"{b}/hosts/a",
            f"{b}/hosts/new/deep",
            f"{b}/file",
            f"{b}/file/sub",
            f"{b}/checkpoint.tar",
            f"{b}/../escape",
            "/proc/sys",
            "/",
            "relative/dir",
            "/a/../b",
            "",
        ]


WORLD: World | None = None


def world() -> World:
    assert WORLD is not None
    return WORLD


TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "a\nb", "../..", "\x00", ".", "-", "UPPER", "ok", *BIG]),
)
LOG_PATHS = st.sampled_from(
    ["c.log", "link.log", "dirlink/x.log", "sub/x.log", ".", "", "../x.log", "/abs.log", "a//b"]
)
CONTAINER_PATHS = st.sampled_from(
    ["/data", "/", "/proc/sys", "/proc/cpuinfo", "relative", "/a/../b", "/dev/shm", "/etc/hosts"]
)
COMMANDS = st.sampled_from(
    [["true"], ["sh", "-c", "exit 3"], ["echo", "hi"], [""], ["/nonexistent"], ["sleep", "1"], []]
)
IMAGES = st.sampled_from(
    [BUSYBOX_REF, PAUSE_REF, "localhost:1/x:y", "", "UPPER/Case", "busybox@sha256:" + "0" * 64]
)
HOSTNAMES = st.sampled_from(["ok", "evil\n6.6.6.6 registry.k8s.io", "h" * 70, "", "-x"])
DNS = st.sampled_from(["10.0.0.1", "10.0.0.1\nnameserver 6.6.6.6", "x\noptions", "ndots:5", ""])
INTS = st.one_of(
    st.sampled_from([0, 1, -1, 2, 1000, 99999, -1000, 2**31 - 1, -(2**31), 2**62]),
    st.integers(-(2**31), 2**31 - 1),
)


def _ids(kind: str) -> st.SearchStrategy[str]:
    real = st.builds(
        lambda i, cut: world().pick_id(i, cut, kind),
        st.integers(0, 1000),
        st.sampled_from([0, 0, 0, 0, 6, 12, 63]),
    )
    return st.one_of(real, real, real, st.sampled_from(["", "x" * 70, "0" * 64, "nosuch"]))


def _cgroup_parents() -> st.SearchStrategy[str]:
    return st.builds(
        lambda choice: [
            "",
            world().daemon.cgroup_parent + "/a",
            world().daemon.cgroup_parent,
            "../../x",
            "/x/../../y",
            "a\nb",
        ][choice],
        st.integers(0, 5),
    )


def _string_for(name: str) -> st.SearchStrategy[str]:
    if name in ("log_directory", "host_path", "location"):
        return st.builds(lambda i: world().paths()[i % len(world().paths())], st.integers(0, 99))
    if name == "log_path":
        return LOG_PATHS
    if name == "container_path":
        return CONTAINER_PATHS
    if name == "cgroup_parent":
        return _cgroup_parents()
    if name == "pod_sandbox_id":
        return _ids("pod")
    if name == "container_id":
        return _ids("container")
    if name.endswith("id"):
        return _ids("")
    if name in ("image", "user_specified_image"):
        return IMAGES
    if name == "hostname":
        return HOSTNAMES
    if name == "runtime_handler":
        return st.sampled_from(["", "", "runc", "nosuch"])
    return TEXT


def _scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    if f.type == FieldDescriptor.TYPE_STRING:
        return _string_for(f.name)
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-1, len(f.enum_type.values) + 1)
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32)
    if f.type in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    ):
        top = 2**32 - 1 if f.type in (FieldDescriptor.TYPE_UINT32, f.TYPE_FIXED32) else 2**63
        return st.integers(0, top)
    if f.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, f.TYPE_SFIXED32):
        return INTS
    return st.one_of(INTS, st.integers(-(2**63), 2**63 - 1))


def _set(draw: st.DrawFn, msg: Message, f: FieldDescriptor, depth: int) -> None:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        key_f, value_f = (
            f.message_type.fields_by_name["key"],
            f.message_type.fields_by_name["value"],
        )
        target = getattr(msg, f.name)
        for _ in range(draw(st.integers(0, 3))):
            key = draw(TEXT if key_f.type == FieldDescriptor.TYPE_STRING else _scalar(key_f))
            if value_f.message_type is not None:
                if depth < 3:
                    target[key].CopyFrom(draw(messages(value_f.message_type, depth + 1)))
            else:
                target[key] = draw(_scalar(value_f))
        return
    if f.is_repeated:
        target = getattr(msg, f.name)
        for _ in range(draw(st.integers(0, 3))):
            if f.message_type is not None:
                if depth < 3:
                    target.add().CopyFrom(draw(messages(f.message_type, depth + 1)))
            elif f.name in {"command", "cmd"}:
                target.extend(draw(COMMANDS))
                return
            else:
                try:
                    target.append(draw(_scalar(f)))
                except (ValueError, TypeError):
                    pass  # a value the field cannot hold (an int out of its range)
        return
    if f.message_type is not None:
        if depth < 4:
            getattr(msg, f.name).CopyFrom(draw(messages(f.message_type, depth + 1)))
        return
    try:
        setattr(msg, f.name, draw(_scalar(f)))
    except (ValueError, TypeError):
        pass  # a value the field cannot hold (an int out of its range)


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    cls = getattr(api_pb2, descriptor.name)
    msg: Message = cls()
    for f in descriptor.fields:
        # a request names its object nearly always; other fields, a third of them
        if f.name.endswith("_id") and depth == 0:
            wanted = draw(st.integers(0, 9)) > 0
        else:
            wanted = draw(st.integers(0, 2)) == 0
        if wanted:
            _set(draw, msg, f, depth)
    return msg


@st.composite
def mutated_configs(draw: st.DrawFn) -> tuple[str, Message]:
    """A valid RunPodSandbox or CreateContainer request with a few fields changed."""
    w = world()
    pod = pod_config(f"fz{draw(st.integers(0, 5))}", log_dir=w.base / "logs")
    if draw(st.booleans()):
        request: Message = api_pb2.RunPodSandboxRequest(config=pod)
        target = pod
    else:
        config = container_config(f"c{draw(st.integers(0, 9))}", "sleep 1")
        request = api_pb2.CreateContainerRequest(
            pod_sandbox_id=w.pick_id(draw(st.integers(0, 99)), 0, "pod"),
            config=config,
            sandbox_config=pod,
        )
        target = config
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "linux", "resources", "security", "dns"]))
        sub = {
            "top": target,
            "linux": target.linux,
            "resources": getattr(target.linux, "resources", target.linux),
            "security": target.linux.security_context,
            "dns": getattr(target, "dns_config", target),
        }[where]
        f = draw(st.sampled_from(list(sub.DESCRIPTOR.fields)))
        _set(draw, sub, f, 1)
    name = (
        "RunPodSandbox" if isinstance(request, api_pb2.RunPodSandboxRequest) else "CreateContainer"
    )
    return f"/runtime.v1.RuntimeService/{name}", request


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    if not data:
        return draw(st.binary(min_size=1, max_size=32))
    kind = draw(st.sampled_from(["flip", "truncate", "append", "duplicate"]))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "append":
        return data + draw(st.binary(min_size=1, max_size=16))
    return data[:at] + data[at:] + data[at : at + 8]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes]:
    how = draw(st.sampled_from(["random", "random", "config", "raw", "mutated"]))
    if how == "config":
        path, msg = draw(mutated_configs())
        return path, msg.SerializeToString()
    path, method = draw(st.sampled_from(METHODS))
    if how == "raw":
        return path, draw(st.binary(max_size=64))
    msg = draw(messages(method.input_type))
    if isinstance(msg, api_pb2.RemoveImageRequest) and msg.image.image in (BUSYBOX_REF, PAUSE_REF):
        # removing the test images themselves would leave every later create NOT_FOUND
        msg.image.image = "localhost:1/x:y"
    body = msg.SerializeToString()
    if how == "mutated":
        body = draw(byte_mutations(body))
    return path, body


# ------------------------------------------------------------------------ running a batch


def _call(channel: grpc.Channel, path: str, body: bytes) -> tuple[grpc.StatusCode, str, float]:
    name = path.rsplit("/", 1)[1]
    method = next(m for p, m in METHODS if p == path)
    started = time.monotonic()
    timeout = (
        EVENTS_TIMEOUT
        if name == "GetContainerEvents"
        else WAIT_TIMEOUT
        if name in MAY_WAIT
        else CALL_TIMEOUT
    )
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path)(body, timeout=timeout):
                pass
        else:
            channel.unary_unary(path)(body, timeout=timeout)
    except grpc.RpcError as err:
        return err.code(), err.details() or "", time.monotonic() - started  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, "", time.monotonic() - started


def _acceptable(path: str, code: grpc.StatusCode, details: str) -> bool:
    name = path.rsplit("/", 1)[1]
    if code in TYPED:
        return True
    if code == grpc.StatusCode.UNKNOWN:
        # containerd's or runc's own error, passed on with its code
        return details.startswith("containerd ")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return name in MAY_WAIT
    if code == grpc.StatusCode.UNAVAILABLE:
        return name == "PullImage" and "unreachable" in details  # no registry from here
    return False


def _learn_ids(w: World, channel: grpc.Channel) -> None:
    runtime = "/runtime.v1.RuntimeService/"
    pods = api_pb2.ListPodSandboxResponse.FromString(
        channel.unary_unary(runtime + "ListPodSandbox")(
            api_pb2.ListPodSandboxRequest().SerializeToString(), timeout=10
        )
    )
    containers = api_pb2.ListContainersResponse.FromString(
        channel.unary_unary(runtime + "ListContainers")(
            api_pb2.ListContainersRequest().SerializeToString(), timeout=10
        )
    )
    w.pod_ids[:] = [p.id for p in pods.items]
    w.container_ids[:] = [c.id for c in containers.containers]


# ------------------------------------------------------------------------ the world's edges


def _entries(directory: str) -> set[str]:
    try:
        return {os.path.join(directory, e) for e in os.listdir(directory)}
    except OSError:
        return set()


def _outside_entries() -> set[str]:
    return _entries("/") | _entries("/etc") | _entries("/var")


def _cgroup_tops() -> set[str]:
    """Top-level cgroups of every hierarchy."""
    hierarchies = [CGROUP_ROOT] if is_v2() else [h for h in CGROUP_ROOT.iterdir() if h.is_dir()]
    return {str(p) for h in hierarchies for p in h.iterdir() if p.is_dir()}


def _another_test_daemons_parent(name: str, own: Daemon) -> bool:
    """The default cgroup parent of another test daemon alive on this machine (another suite
    running meanwhile): ``pycri-test-<its base dir>``, while that dir exists."""
    prefix = "pycri-test-"
    base = name.removeprefix(prefix)
    return (
        name.startswith(prefix)
        and name != own.cgroup_parent.strip("/")
        and base.startswith("pycri-")
        and Path("/tmp", base).is_dir()
    )


def _requested_paths(sent: list[tuple[str, bytes]]) -> tuple[set[str], set[str]]:
    """The log directories and host paths, and the cgroup parents, the sent requests named
    (decoded as the daemon decoded them)."""
    named: set[str] = set()
    cgroups: set[str] = set()
    for path, body in sent:
        name = path.rsplit("/", 1)[1]
        cls = {
            "RunPodSandbox": api_pb2.RunPodSandboxRequest,
            "CreateContainer": api_pb2.CreateContainerRequest,
            "CheckpointContainer": api_pb2.CheckpointContainerRequest,
        }.get(name)
        if cls is None:
            continue
        try:
            msg = cls.FromString(body)
        except DecodeError:
            continue
        if isinstance(msg, api_pb2.CheckpointContainerRequest):
            named.add(os.path.normpath(msg.location or "/nothing"))
            continue
        config = msg.config
        if isinstance(msg, api_pb2.RunPodSandboxRequest):
            named.add(os.path.normpath(config.log_directory or "/nothing"))
            cgroups.add(config.linux.cgroup_parent.strip("/").split("/")[0])
        else:
            named.update(os.path.normpath(m.host_path) for m in config.mounts if m.host_path)
            named.add(os.path.normpath(msg.sandbox_config.log_directory or "/nothing"))
    return named, cgroups


def _explained(entry: str, named: set[str]) -> bool:
    return any(p == entry or p.startswith(entry.rstrip("/") + "/") for p in named)


@pytest.fixture
def fuzz_world(make_daemon: type[Daemon], tmp_path: Path) -> Iterator[World]:
    global WORLD  # noqa: PLW0603 - the strategies read the live world
    d = make_daemon()
    d.start()
    asyncio.run(import_test_images(d.containerd_socket))
    base = Path(f"/tmp/pycri-fuzz-{secrets.token_hex(4)}")
    victim = Path(f"/tmp/pycri-victim-{secrets.token_hex(4)}")
    (base / "logs" / "sub").mkdir(parents=True)
    (base / "hosts" / "a").mkdir(parents=True)
    (base / "file").write_text("a regular file\n")
    victim.mkdir()
    (victim / "target.txt").write_text("precious\n")
    (base / "logs" / "link.log").symlink_to(victim / "target.txt")
    (base / "logs" / "dirlink").symlink_to(victim)
    WORLD = World(daemon=d, base=base, victim=victim)
    try:
        yield WORLD
    finally:
        WORLD = None
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(victim, ignore_errors=True)


async def test_fuzzing_every_rpc_gets_typed_answers_and_leaves_no_trace(
    fuzz_world: World,
) -> None:
    await asyncio.to_thread(_fuzz, fuzz_world)


def _fuzz(w: World) -> None:
    d = w.daemon
    channel = grpc.insecure_channel(
        f"unix://{d.socket}", options=[("grpc.max_receive_message_length", 64 << 20)]
    )
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
    outside_before, cgroups_before = _outside_entries(), _cgroup_tops()
    log_size = d.log_path.stat().st_size
    # a pod with a running and an exited container, so IDs reach past the lookups
    seed = pod_config("seed", log_dir=w.base / "logs")
    runtime = "/runtime.v1.RuntimeService/"
    pod_id = api_pb2.RunPodSandboxResponse.FromString(
        channel.unary_unary(runtime + "RunPodSandbox")(
            api_pb2.RunPodSandboxRequest(config=seed).SerializeToString(), timeout=30
        )
    ).pod_sandbox_id
    for name, script in (("runs", "sleep 3600"), ("exits", "exit 4")):
        config = container_config(name, script)
        if name == "runs":  # sleep as PID 1 dies on SIGTERM: a fuzzed Stop never waits long
            config.command[:] = ["sleep", "3600"]
        cid = api_pb2.CreateContainerResponse.FromString(
            channel.unary_unary(runtime + "CreateContainer")(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod_id, config=config, sandbox_config=seed
                ).SerializeToString(),
                timeout=30,
            )
        ).container_id
        channel.unary_unary(runtime + "StartContainer")(
            api_pb2.StartContainerRequest(container_id=cid).SerializeToString(), timeout=30
        )
    _learn_ids(w, channel)
    bad: list[tuple[str, grpc.StatusCode, str]] = []
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(batch=st.lists(requests(), min_size=BATCH // 2, max_size=BATCH))
    def run(batch: list[tuple[str, bytes]]) -> None:
        w.sent.extend(batch)
        answers = list(pool.map(lambda r: _call(channel, *r), batch))
        for (path, _), (code, details, took) in zip(batch, answers, strict=True):
            assert took < CALL_TIMEOUT + 5, (path, took)
            if not _acceptable(path, code, details):
                bad.append((path, code, details[:300]))
        assert not bad, bad
        assert d.proc is not None and d.proc.poll() is None, "the daemon died"
        channel.unary_unary(runtime + "Version")(b"", timeout=5)
        _learn_ids(w, channel)

    run()
    print(f"fuzz: {len(w.sent)} requests in {time.monotonic() - started:.0f}s")
    assert len(w.sent) >= 1500

    # nothing in containerd that pycri does not list (the undo journal may still be busy)
    def unlisted() -> list[str]:
        _learn_ids(w, channel)
        listed = set(w.ids)

        async def look() -> list[str]:
            async with containerd_of(d) as ctd:
                found = [f"container {c.id}" for c in await ctd.containers.list()]
                found += [f"task {t.id}" for t in await ctd.tasks.list()]
                found += [
                    f"snapshot {s.name}"
                    for s in await ctd.snapshots.list("overlayfs")
                    if s.kind == 2
                ]
                leases = [f"lease {lease.id}" for lease in await ctd.leases.list()]
            strays = [f for f in found if f.split()[1] not in listed]
            return strays + [x for x in leases if x.split()[1].startswith("pycri-")]

        return asyncio.run(look())

    deadline = time.monotonic() + 30
    while (strays := unlisted()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not strays, strays
    assert not list((d.root / "creating").iterdir())

    # nothing written outside pycri's dirs and the requested ones
    assert (w.victim / "target.txt").read_text() == "precious\n"
    assert sorted(os.listdir(w.victim)) == ["target.txt"]
    named, cgroup_parents = _requested_paths(w.sent)
    new_outside = {e for e in _outside_entries() - outside_before if not _explained(e, named)}
    assert not new_outside, new_outside
    new_cgroups = {
        top
        for top in _cgroup_tops() - cgroups_before
        if os.path.basename(top) not in {*cgroup_parents, d.cgroup_parent.strip("/")}
        and not _another_test_daemons_parent(os.path.basename(top), d)
    }
    assert not new_cgroups, new_cgroups
    with d.log_path.open("rb") as log:
        log.seek(log_size)
        added = log.read()
    assert b"Traceback" not in added
    assert max((len(line) for line in added.splitlines()), default=0) < 16384
    # and everything goes with its pod
    _learn_ids(w, channel)
    for pod in api_pb2.ListPodSandboxResponse.FromString(
        channel.unary_unary(runtime + "ListPodSandbox")(b"", timeout=10)
    ).items:
        for rpc, request in (
            ("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id)),
            ("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id)),
        ):
            channel.unary_unary(runtime + rpc)(request.SerializeToString(), timeout=60)
    assert unlisted() == [] and w.ids == []
    pool.shutdown()
    channel.close()
