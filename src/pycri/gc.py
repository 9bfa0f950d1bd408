"""Orphans: what belongs to no known sandbox or container, and their removal.

``pycri check --orphans`` lists them; ``pycri gc`` removes them. What pycri knows is
whatever containerd has a pycri container record for (the source of truth for identity), so
an orphan is:

- a pycri-labelled containerd container whose metadata cannot be read;
- an active overlayfs snapshot that no containerd container uses (image layers are
  committed snapshots and never orphans);
- a ``pycri-create-*`` lease (they live for the seconds a create takes);
- a half-made object: an intent in the undo journal (``ROOT/creating/<id>``, see
  ``service/undo.py``) whose create never completed or whose rollback failed; its record
  (if any) counts as half-made, not known, and gc removes all of it the way the daemon's
  undo journal does (task, CNI, record, snapshot, lease, netns, dirs, cgroup);
- a network namespace pin, sandbox dir, container dir or FIFO dir with no record;
- a cgroup below the daemon's default ``cgroup_parent`` with no record (kubelet's pod
  cgroups are kubelet's: they are never looked at);
- a shim of pycri's containerd whose ID is neither a task containerd knows nor a record
  (containerd died while it created the task; ``containerd/shims.py``).

When a daemon holds the state dir's lock, creates may be in flight: their leases, intents
and snapshots are left alone for a minute. With no daemon running nothing is in flight and
everything found is reported.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pycri.cgroups import cgroup_dirs
from pycri.config import Config
from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import NotFoundError
from pycri.containerd.shims import kill_shims, shims
from pycri.events.types import Kind
from pycri.net.manager import PodNetwork
from pycri.net.netns import NetNS
from pycri.paths import Paths
from pycri.service import records
from pycri.service.undo import Cleanup, Intent, read_intents

ACTIVE_SNAPSHOT = 2  # containerd.services.snapshots.v1.Kind.ACTIVE
LEASE_GRACE_S = 60


@dataclass(frozen=True)
class Orphan:
    kind: str
    ident: str
    detail: str = ""


def _dirs(base: Path) -> list[Path]:
    return [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []


def daemon_running(paths: Paths) -> bool:
    """Whether a pycri daemon holds the state dir's lock (its creates may be in flight)."""
    try:
        fd = os.open(paths.lock_file, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def _layout(config: Config) -> Paths:
    return Paths(root=Path(config.root), state=Path(config.state))


def _cgroups(config: Config) -> list[Path]:
    """Cgroup directories directly below the default parent, in every hierarchy."""
    return [
        child
        for top in cgroup_dirs(config.cgroup_parent)
        if top.is_dir()
        for child in top.iterdir()
        if child.is_dir()
    ]


async def find_orphans(config: Config, client: ContainerdClient) -> list[Orphan]:
    found: list[Orphan] = []
    layout = _layout(config)
    grace = LEASE_GRACE_S if await asyncio.to_thread(daemon_running, layout) else 0
    now = time.time()
    half_made: set[str] = set()
    in_flight: set[str] = set()
    for intent in await asyncio.to_thread(read_intents, layout.undo_dir):
        if now - intent.created_at < grace:
            in_flight.add(intent.object_id)
            continue
        half_made.add(intent.object_id)
        found.append(Orphan("half-made", intent.object_id, intent.kind.value))
    all_records = await client.containers.list(timeout=30)
    record_ids = {r.id for r in all_records}
    known: set[str] = set(in_flight)
    for record in all_records:
        if records.KIND_LABEL not in record.labels or record.id in half_made:
            continue
        try:
            records.record_metadata(record)
            known.add(record.id)
        except (KeyError, ValueError) as err:
            found.append(Orphan("container-record", record.id, f"unreadable metadata: {err!r}"))
    for lease in await client.leases.list():
        if not lease.id.startswith("pycri-"):
            continue
        if now - lease.created_at.seconds < grace:
            known.add(lease.id.removeprefix(records.LEASE_PREFIX))
            continue
        if lease.id.removeprefix(records.LEASE_PREFIX) not in half_made:
            found.append(Orphan("lease", lease.id))
    for snapshot in await client.snapshots.list(config.snapshotter):
        name = snapshot.name
        if (
            snapshot.kind == ACTIVE_SNAPSHOT
            and name not in record_ids
            and name not in half_made
            and name not in known
        ):
            found.append(Orphan("snapshot", name, f"parent {snapshot.parent}"))
    netns_dir = layout.netns_dir
    paths = [
        *(
            ("netns", p)
            for p in await asyncio.to_thread(
                lambda: list(netns_dir.iterdir()) if netns_dir.is_dir() else []
            )
        ),
        *(("sandbox-dir", p) for p in await asyncio.to_thread(_dirs, layout.sandboxes_dir)),
        *(("container-dir", p) for p in await asyncio.to_thread(_dirs, layout.containers_dir)),
        *(("io-dir", p) for p in await asyncio.to_thread(_dirs, layout.container_state_dir)),
        *(("cgroup", p) for p in await asyncio.to_thread(_cgroups, config)),
    ]
    found += [
        Orphan(kind, str(path))
        for kind, path in paths
        if path.name not in known and path.name not in half_made
    ]
    task_ids = {t.id for t in await client.tasks.list()}
    for pid, shim_id in (await asyncio.to_thread(shims, client.address)).items():
        if shim_id not in task_ids and shim_id not in known and shim_id not in half_made:
            found.append(Orphan("shim", str(pid), f"id {shim_id}"))
    return found


async def remove_orphan(config: Config, client: ContainerdClient, orphan: Orphan) -> None:
    try:
        if orphan.kind == "half-made":
            await _finish_half_made(config, client, orphan)
        elif orphan.kind == "container-record":
            try:
                await client.tasks.kill(orphan.ident, 9, all=True)
                await client.tasks.delete(orphan.ident)
            except NotFoundError:
                pass
            await client.containers.delete(orphan.ident)
            await client.snapshots.remove(config.snapshotter, orphan.ident)
        elif orphan.kind == "lease":
            await client.leases.delete(orphan.ident, sync=True)
        elif orphan.kind == "snapshot":
            await client.snapshots.remove(config.snapshotter, orphan.ident)
        elif orphan.kind == "netns":
            await NetNS(_layout(config).netns_dir).remove(Path(orphan.ident))
        elif orphan.kind == "cgroup":
            await asyncio.to_thread(_remove_cgroup_dir, Path(orphan.ident))
        elif orphan.kind == "shim":
            await asyncio.to_thread(kill_shims, client.address, orphan.detail.removeprefix("id "))
        else:
            await asyncio.to_thread(shutil.rmtree, orphan.ident, True)
    except NotFoundError:
        pass


def _remove_cgroup_dir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError as err:
        print(f"cgroup {path} not removed: {err.strerror}")


async def _finish_half_made(config: Config, client: ContainerdClient, orphan: Orphan) -> None:
    """What the daemon's undo journal does for one intent, then the intent is dropped."""
    layout = _layout(config)
    netns = NetNS(layout.netns_dir)
    cleanup = Cleanup(
        client=client,
        snapshotter=config.snapshotter,
        paths=layout,
        netns=netns,
        network=PodNetwork(
            conf_dir=Path(config.cni_conf_dir), bin_dirs=config.cni_bin_dirs, netns=netns
        ),
    )
    intents = {i.object_id: i for i in await asyncio.to_thread(read_intents, layout.undo_dir)}
    intent = intents.get(orphan.ident) or Intent(
        kind=Kind(orphan.detail), object_id=orphan.ident, cgroups_path="", created_at=0
    )
    await cleanup(intent)
    await asyncio.to_thread(_drop_intent, layout.undo_entry(orphan.ident))


def _drop_intent(path: Path) -> None:
    path.unlink(missing_ok=True)


async def run(config: Config, *, remove: bool) -> int:
    client = ContainerdClient(config.containerd_socket)
    try:
        orphans = await find_orphans(config, client)
        for orphan in orphans:
            print(f"{orphan.kind:16} {orphan.ident} {orphan.detail}".rstrip())
            if remove:
                await remove_orphan(config, client, orphan)
        verb = "removed" if remove else "found"
        print(f"{len(orphans)} orphan(s) {verb}")
    finally:
        await client.close()
    return 0
