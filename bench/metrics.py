"""The cost of kubelet's CRI metrics scrape: ListPodSandboxMetrics with 100 running pods.

    .venv/bin/python -m bench.metrics                 # 100 pods, 30 calls (~3 min on 2 cores)
    .venv/bin/python -m bench.metrics --quick         # 5 pods, 5 calls, results in /tmp

With ``PodAndContainerStatsFromCRI`` kubelet answers every ``/metrics/cadvisor`` scrape
(Prometheus: every 10-30 s) with one ListPodSandboxMetrics call, and its ``/stats/summary``
(every 10 s, the eviction manager and metrics-server) with ListPodSandboxStats. What is
measured, per call, with P pods each running one sleeping container:

- wall time as the client sees it (p50, p95, max over N calls, one call per second);
- CPU time of the runtime's daemon processes (pycri and its managed containerd; containerd
  with its CRI plugin), from ``/proc/<pid>/stat`` before and after the N calls, divided by N;
- the answer's size and number of samples.

pycri's pods get a real pod network (a bridge with host-local IPAM, like
``examples/cni/10-pycri.conflist``), so every pod has an ``eth0`` whose counters are read.
containerd's CRI plugin (Debian's 1.6) runs host-network pods (its CNI dir stays empty, as in
``bench.run``): ListPodSandboxStats is the side-by-side comparison, since containerd 1.6 does
not implement ListPodSandboxMetrics at all; the report records the code it answers.

Results go to ``bench/results/<date>-metrics.{json,md}`` (``--out``); a short summary is
printed. Needs root, Debian's containerd, runc and containernetworking-plugins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2

from bench.cri import RPC_TIMEOUT, CriClient
from bench.daemons import (
    CNI_BIN_DIR,
    ContainerdCri,
    Pycri,
    Runtime,
    build_images,
    cpu_seconds,
    load_images,
    short_temp_dir,
    wait_for_quiet_machine,
)
from bench.scenarios import remove_everything
from bench.specs import SLEEPER, container_config, pod_config
from bench.stats import summarize

REPO = Path(__file__).resolve().parents[1]
BRIDGE = "pycri-bm0"
SUBNET = "10.97.0.0/16"
CGROUP_PARENT = "/pycri-bench-metrics"
CGROUP_ROOT = Path("/sys/fs/cgroup")


class PycriWithNetwork(Pycri):
    """pycri whose CNI conf dir holds a bridge network of its own (torn down in ``stop``)."""

    @property
    def cni_dir(self) -> Path:
        return self.base / "cni"

    def start(self) -> None:
        self.cni_dir.mkdir(parents=True, exist_ok=True)
        network = {
            "cniVersion": "1.0.0",
            "name": "pycri-bench",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": SUBNET}]],
                        "dataDir": str(self.base / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
        (self.cni_dir / "10-bench.conflist").write_text(json.dumps(network))
        self._spawn(
            [*self.serve_argv(), "--cni-conf-dir", str(self.cni_dir), "--cni-bin-dir", CNI_BIN_DIR]
        )

    def stop(self) -> None:
        super().stop()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def remove_pod_cgroups() -> None:
    """The pods' cgroup parents (kubelet removes its own; here nobody else would)."""
    tops = [CGROUP_ROOT / CGROUP_PARENT.strip("/")]
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        tops = [d / CGROUP_PARENT.strip("/") for d in CGROUP_ROOT.iterdir() if d.is_dir()]
    for top in tops:
        if not top.is_dir():
            continue
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()
        top.rmdir()


@dataclass(frozen=True, kw_only=True)
class CallCost:
    rpc: str
    calls: int
    wall: dict[str, float]
    cpu_per_call_ms: float
    response_bytes: int
    samples: int
    raw_wall_s: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "rpc": self.rpc,
            "calls": self.calls,
            "wall_s": self.wall,
            "cpu_per_call_ms": self.cpu_per_call_ms,
            "response_bytes": self.response_bytes,
            "samples": self.samples,
            "raw_wall_s": self.raw_wall_s,
        }


def _samples(rpc: str, response: Any) -> int:
    if rpc == "ListPodSandboxMetrics":
        return sum(
            len(p.metrics) + sum(len(c.metrics) for c in p.container_metrics)
            for p in response.pod_metrics
        )
    return len(response.stats)


async def measure(
    *, runtime: Runtime, client: CriClient, rpc: str, calls: int, interval: float
) -> CallCost:
    request = (
        api_pb2.ListPodSandboxMetricsRequest()
        if rpc == "ListPodSandboxMetrics"
        else api_pb2.ListPodSandboxStatsRequest()
    )
    call = getattr(client.runtime, rpc)
    await call(request, timeout=RPC_TIMEOUT)  # warm: first-call caches (snapshot dirs)
    await wait_for_quiet_machine()
    walls: list[float] = []
    size = samples = 0
    cpu_before = cpu_seconds(runtime.daemon_pids())
    for _ in range(calls):
        started = time.perf_counter()
        response = await call(request, timeout=RPC_TIMEOUT)
        walls.append(time.perf_counter() - started)
        size, samples = response.ByteSize(), _samples(rpc, response)
        await asyncio.sleep(interval)
    cpu = cpu_seconds(runtime.daemon_pids()) - cpu_before
    summary = summarize(walls)
    return CallCost(
        rpc=rpc,
        calls=calls,
        wall={"p50": summary.p50, "p95": summary.p95, "max": summary.max, "mean": summary.mean},
        cpu_per_call_ms=cpu / calls * 1000,
        response_bytes=size,
        samples=samples,
        raw_wall_s=walls,
    )


async def start_pods(
    *, client: CriClient, pods: int, run_label: str, work_dir: Path, network: bool
) -> int:
    log_directory = work_dir / f"logs-{run_label}"
    log_directory.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(4)
    started = 0

    async def one(index: int) -> None:
        nonlocal started
        pod = pod_config(
            name=f"m-{run_label}-{index}", run_label=run_label, log_directory=log_directory
        )
        # kubelet gives every pod a cgroup of its own (containerd's stats need one)
        pod.linux.cgroup_parent = f"{CGROUP_PARENT}/pod{pod.metadata.uid}"
        if network:
            pod.linux.security_context.namespace_options.network = api_pb2.POD
        async with gate:
            pod_id = (
                await client.runtime.RunPodSandbox(
                    api_pb2.RunPodSandboxRequest(config=pod), timeout=RPC_TIMEOUT
                )
            ).pod_sandbox_id
            config = container_config(name="app", script=SLEEPER, run_label=run_label)
            created = await client.runtime.CreateContainer(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod_id, config=config, sandbox_config=pod
                ),
                timeout=RPC_TIMEOUT,
            )
            await client.runtime.StartContainer(
                api_pb2.StartContainerRequest(container_id=created.container_id),
                timeout=RPC_TIMEOUT,
            )
            started += 1

    await asyncio.gather(*(one(i) for i in range(pods)))
    return started


async def unimplemented_code(client: CriClient) -> str:
    try:
        await client.runtime.ListPodSandboxMetrics(
            api_pb2.ListPodSandboxMetricsRequest(), timeout=RPC_TIMEOUT
        )
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()}"
    return "OK"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run(*, pods: int, calls: int, interval: float) -> dict[str, Any]:
    work = short_temp_dir(prefix="pycri-bm-")
    tarballs = await asyncio.to_thread(build_images, directory=work)
    pycri = PycriWithNetwork(base=work / "pycri")
    containerd = ContainerdCri(base=work / "containerd")
    results: dict[str, Any] = {"pods": pods, "calls": calls, "interval_s": interval}
    clients: list[CriClient] = []
    try:
        for runtime in (pycri, containerd):
            runtime.start()
            await runtime.wait_ready()
            await load_images(runtime=runtime, tarballs=tarballs)
        for runtime, network in ((pycri, True), (containerd, False)):
            client = CriClient(socket=runtime.cri_socket)
            clients.append(client)
            label = f"metrics-{runtime.name}"
            log(f"{runtime.name}: starting {pods} pods")
            running = await start_pods(
                client=client, pods=pods, run_label=label, work_dir=work, network=network
            )
            entry: dict[str, Any] = {"running_pods": running}
            for rpc in ("ListPodSandboxMetrics", "ListPodSandboxStats"):
                if runtime is containerd and rpc == "ListPodSandboxMetrics":
                    entry["ListPodSandboxMetrics"] = {"answer": await unimplemented_code(client)}
                    continue
                log(f"{runtime.name}: {calls} x {rpc}")
                cost = await measure(
                    runtime=runtime, client=client, rpc=rpc, calls=calls, interval=interval
                )
                entry[rpc] = cost.to_json()
            results[runtime.name] = entry
            await remove_everything(client=client, run_label=label)
    finally:
        for client in clients:
            await client.close()
        for runtime in (pycri, containerd):
            runtime.stop()
        await asyncio.to_thread(remove_pod_cgroups)
    return results


def render(results: dict[str, Any], *, stamp: str) -> str:
    p, c = results["pycri"], results["containerd-cri"]

    def ms(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    lines = [
        f"# CRI metrics scrape cost, {stamp}",
        "",
        f"{results['pods']} running pods (one sleeping container each), {results['calls']} "
        f"calls per RPC, one every {results['interval_s']:g} s. CPU: the daemon processes "
        "(pycri + its managed containerd; containerd with its CRI plugin).",
        "",
        "| RPC | runtime | wall p50 | wall p95 | wall max | CPU per call | samples | bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in (("pycri", p), ("containerd-cri", c)):
        for rpc in ("ListPodSandboxMetrics", "ListPodSandboxStats"):
            cost = entry[rpc]
            if "answer" in cost:
                lines.append(f"| {rpc} | {name} | - | - | - | - | - | {cost['answer']} |")
                continue
            w = cost["wall_s"]
            lines.append(
                f"| {rpc} | {name} | {ms(w['p50'])} | {ms(w['p95'])} | {ms(w['max'])} | "
                f"{cost['cpu_per_call_ms']:.1f} ms | {cost['samples']} | {cost['response_bytes']} |"
            )
    stats_ratio = (
        p["ListPodSandboxStats"]["wall_s"]["p50"] / c["ListPodSandboxStats"]["wall_s"]["p50"]
    )
    cpu_ratio = (
        p["ListPodSandboxStats"]["cpu_per_call_ms"] / c["ListPodSandboxStats"]["cpu_per_call_ms"]
        if c["ListPodSandboxStats"]["cpu_per_call_ms"]
        else float("nan")
    )
    every_10s = p["ListPodSandboxMetrics"]["cpu_per_call_ms"] / 10_000 * 100
    lines += [
        "",
        f"ListPodSandboxStats, pycri / containerd-CRI: wall p50 {stats_ratio:.2f}, CPU per call "
        f"{cpu_ratio:.2f}. ListPodSandboxMetrics every 10 s costs pycri "
        f"{every_10s:.2f} % of one core.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.pods, args.calls, args.interval = 5, 5, 0.2
    stamp = datetime.now(tz=UTC).strftime("%Y-%m-%d")
    out = args.out or (Path("/tmp") if args.quick else REPO / "bench" / "results")
    results = asyncio.run(run(pods=args.pods, calls=args.calls, interval=args.interval))
    results["date"] = stamp
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stamp}-metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results, stamp=stamp)
    (out / f"{stamp}-metrics.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
