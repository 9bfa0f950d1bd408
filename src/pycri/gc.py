"""Orphans: what belongs to no known sandbox or container, and their removal.

``pycri check --orphans`` lists them; ``pycri gc`` removes them. What pycri knows is
whatever containerd has a pycri container record for (the source of truth for identity), so
an orphan is:

- a pycri-labelled containerd container whose metadata cannot be read;
- an active overlayfs snapshot that no containerd container uses (image layers are
  committed snapshots and never orphans);
- a ``pycri-create-*`` lease (they live for the seconds a create takes);
- a network namespace pin, sandbox dir, container dir or FIFO dir with no record.

Run it while the node is quiet: a create in flight holds its lease and snapshot for a
moment, and would be reported (gc leaves leases younger than a minute alone for that
reason, and the snapshots they hold).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pycri.config import Config
from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import NotFoundError
from pycri.net.netns import NetNS
from pycri.paths import Paths
from pycri.service import records

ACTIVE_SNAPSHOT = 2  # containerd.services.snapshots.v1.Kind.ACTIVE
LEASE_GRACE_S = 60


@dataclass(frozen=True)
class Orphan:
    kind: str
    ident: str
    detail: str = ""


def _dirs(base: Path) -> list[Path]:
    return [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []


async def find_orphans(config: Config, client: ContainerdClient) -> list[Orphan]:
    found: list[Orphan] = []
    all_records = await client.containers.list(timeout=30)
    record_ids = {r.id for r in all_records}
    known: set[str] = set()
    for record in all_records:
        if records.KIND_LABEL not in record.labels:
            continue
        try:
            records.record_metadata(record)
            known.add(record.id)
        except (KeyError, ValueError) as err:
            found.append(Orphan("container-record", record.id, f"unreadable metadata: {err!r}"))
    young_leases: set[str] = set()
    now = time.time()
    for lease in await client.leases.list():
        if not lease.id.startswith("pycri-"):
            continue
        if now - lease.created_at.seconds < LEASE_GRACE_S:
            young_leases.add(lease.id)
            continue
        found.append(Orphan("lease", lease.id))
    for snapshot in await client.snapshots.list(config.snapshotter):
        if snapshot.kind == ACTIVE_SNAPSHOT and snapshot.name not in record_ids:
            found.append(Orphan("snapshot", snapshot.name, f"parent {snapshot.parent}"))
    layout = Paths(root=Path(config.root), state=Path(config.state))
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
    ]
    found += [Orphan(kind, str(path)) for kind, path in paths if path.name not in known]
    return found


async def remove_orphan(config: Config, client: ContainerdClient, orphan: Orphan) -> None:
    try:
        if orphan.kind == "container-record":
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
            netns_dir = Paths(root=Path(config.root), state=Path(config.state)).netns_dir
            await NetNS(netns_dir).remove(Path(orphan.ident))
        else:
            await asyncio.to_thread(shutil.rmtree, orphan.ident, True)
    except NotFoundError:
        pass


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
