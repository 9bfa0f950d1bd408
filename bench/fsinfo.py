"""ImageFsInfo latency on both runtimes, as kubelet sees it.

kubelet asks for ImageFsInfo every few seconds (the eviction manager's and the image GC's
housekeeping, the summary API). Two ways of calling matter:

- **burst**: ``calls`` calls back to back. A runtime that answers from a cached figure is
  measured on its per-call cost; one that caches briefly walks once at most.
- **paced**: ``paced_calls`` calls ``pace_seconds`` apart, longer than a short on-demand
  cache keeps a figure (pycri's used to keep one 5 s), so a runtime that walks on a miss walks
  on every paced call, as it would under kubelet. The runtimes take turns within each pace
  tick, so the slow drifts of a shared machine hit both alike.

Both need the images loaded (the snapshotter directory holds something to count); the
reported figure is checked (a mountpoint, more than 0 bytes and inodes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
from cri_api.v1 import api_pb2

from bench.cri import CriClient
from bench.scenarios import Correctness
from bench.stats import summarize

CALL_TIMEOUT = 30.0


@dataclass(kw_only=True)
class FsInfoResult:
    burst: list[float] = field(default_factory=list)  # seconds per call
    paced: list[float] = field(default_factory=list)
    pace_seconds: float = 0.0
    used_bytes: int = 0
    correctness: Correctness = field(default_factory=Correctness)

    def to_json(self) -> dict[str, Any]:
        return {
            "burst": self.burst,
            "paced": self.paced,
            "pace_seconds": self.pace_seconds,
            "burst_summary": summarize(self.burst).to_json(),
            "paced_summary": summarize(self.paced).to_json(),
            "used_bytes": self.used_bytes,
            "correctness": self.correctness.to_json(),
        }


async def _one_call(client: CriClient, result: FsInfoResult) -> float | None:
    started = time.perf_counter()
    try:
        response = await client.image.ImageFsInfo(
            api_pb2.ImageFsInfoRequest(), timeout=CALL_TIMEOUT
        )
    except grpc.aio.AioRpcError as err:
        result.correctness.failed_rpcs += 1
        result.correctness.note(f"ImageFsInfo: {err.code().name}: {err.details()}")
        return None
    elapsed = time.perf_counter() - started
    result.correctness.checked += 1
    filesystems = list(response.image_filesystems)
    if (
        not filesystems
        or not filesystems[0].fs_id.mountpoint
        or filesystems[0].used_bytes.value == 0
        or filesystems[0].inodes_used.value == 0
    ):
        result.correctness.wrong += 1
        result.correctness.note(f"ImageFsInfo without a usable figure: {response}")
    else:
        result.used_bytes = filesystems[0].used_bytes.value
    return elapsed


async def run_image_fs_info(
    *,
    clients: Mapping[str, CriClient],
    calls: int = 200,
    paced_calls: int = 5,
    pace_seconds: float = 6.0,
) -> dict[str, FsInfoResult]:
    """Per runtime name: ``calls`` back-to-back latencies, then ``paced_calls`` paced ones."""
    results = {name: FsInfoResult(pace_seconds=pace_seconds) for name in clients}
    for name, client in clients.items():
        for _ in range(calls):
            elapsed = await _one_call(client, results[name])
            if elapsed is not None:
                results[name].burst.append(elapsed)
    for tick in range(paced_calls):
        await asyncio.sleep(pace_seconds)
        order = list(clients.items())
        if tick % 2:
            order.reverse()
        for name, client in order:
            elapsed = await _one_call(client, results[name])
            if elapsed is not None:
                results[name].paced.append(elapsed)
    return results
