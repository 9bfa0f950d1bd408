"""Streaming benchmarks: Exec, PortForward and idle streams, pycri and containerd's CRI plugin
side by side in one run, reported as ratios.

    .venv/bin/python -m bench.streaming            # ~2 min on 2 cores
    .venv/bin/python -m bench.streaming --quick    # tiny sizes: checks the tool works

What it measures, on both runtimes (each with a host-network pod whose busybox container runs
a TCP echo server, ``nc -ll -p PORT -e cat``):

- **exec round trip**: Exec RPC → connect to the URL → SPDY upgrade → the command's streams →
  ``echo`` output → exit status; N times in a row, with the in-process SPDY client
  (``pycri.testing.stream_client``, so no client start-up is in the number) and, when
  ``crictl`` is found, the whole ``crictl exec`` command as a user would run it.
- **port-forward throughput**: ``crictl port-forward`` (the real Go client), then SIZE bytes
  sent through the forwarded port to the echo server and read back (both directions at
  once); MiB/s of payload each way, and the runtime process's CPU seconds per MiB moved
  (pycri's own process; containerd's for its plugin: where each streaming server runs).
- **memory per idle stream**: K exec sessions of ``sleep`` held open; the growth of the
  runtime's RSS divided by K (the exec processes' shims are not counted on either side).

Runtimes alternate per measurement; the machine is let settle before each. Writes
``bench/results/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cri_api.v1 import api_pb2

from bench.cri import CriClient
from bench.daemons import (
    ContainerdCri,
    Pycri,
    Runtime,
    build_images,
    load_images,
    rss_bytes,
    short_temp_dir,
    wait_for_quiet_machine,
)
from bench.specs import BUSYBOX_REF
from pycri.testing.stream_client import (
    crictl_port_forward,
    echo_through,
    open_command_streams,
    spdy_command,
    spdy_upgrade,
)

REPO = Path(__file__).resolve().parents[1]
CRICTL = Path(os.environ.get("PYCRI_TEST_CRICTL", REPO.parent / "shared" / "bin" / "crictl"))
MIB = 1 << 20


@dataclass
class RuntimeResult:
    exec_inprocess_s: list[float]
    exec_crictl_s: list[float]
    portforward_mib_s: float
    portforward_cpu_s_per_mib: float
    idle_stream_bytes: float


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _streaming_pid(runtime: Runtime) -> int:
    """The process that runs the runtime's streaming server."""
    pids = runtime.daemon_pids()
    return pids["pycri"] if "pycri" in pids else pids["containerd"]


async def _echo_pod(client: CriClient, *, name: str, port: int) -> tuple[str, str]:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=secrets.token_hex(8)),
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=api_pb2.NODE)
            )
        ),
    )
    pod_id = (
        await client.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60)
    ).pod_sandbox_id
    container = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="echo"),
        image=api_pb2.ImageSpec(image=BUSYBOX_REF),
        command=["sh", "-c", f"nc -ll -p {port} -e cat & exec sleep 3600"],
    )
    container.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    cid = (
        await client.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=container, sandbox_config=config
            ),
            timeout=60,
        )
    ).container_id
    await client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
    await asyncio.sleep(0.5)  # nc listening
    return pod_id, cid


async def _exec_inprocess(client: CriClient, cid: str) -> float:
    started = time.perf_counter()
    url = (
        await client.runtime.Exec(
            api_pb2.ExecRequest(container_id=cid, cmd=["echo", "hi"], stdout=True, stderr=True)
        )
    ).url
    out, _, _ = await spdy_command(url)
    elapsed = time.perf_counter() - started
    assert out == b"hi\n", out
    return elapsed


async def _exec_crictl(runtime: Runtime, cid: str) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        str(CRICTL),
        "--runtime-endpoint",
        f"unix://{runtime.cri_socket}",
        "exec",
        cid,
        "echo",
        "hi",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    elapsed = time.perf_counter() - started
    assert out == b"hi\n", out
    return elapsed


async def _portforward(runtime: Runtime, pod_id: str, port: int, size: int) -> tuple[float, float]:
    endpoint = f"unix://{runtime.cri_socket}"
    async with crictl_port_forward(CRICTL, endpoint=endpoint, pod_id=pod_id, port=port) as local:
        data = secrets.token_bytes(size)
        await asyncio.to_thread(echo_through, local, b"warm-up")
        pid = _streaming_pid(runtime)
        cpu_before, started = _process_cpu_seconds(pid), time.perf_counter()
        echoed = await asyncio.to_thread(echo_through, local, data)
        elapsed, cpu = time.perf_counter() - started, _process_cpu_seconds(pid) - cpu_before
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest(), "corrupted"
    mib = size / MIB
    return mib / elapsed, cpu / (2 * mib)  # payload each way; CPU per MiB moved (both ways)


async def _idle_streams(client: CriClient, runtime: Runtime, cid: str, count: int) -> float:
    pid = _streaming_pid(runtime)
    await wait_for_quiet_machine()
    before = rss_bytes(pid)
    sessions = []
    try:
        for _ in range(count):
            url = (
                await client.runtime.Exec(
                    api_pb2.ExecRequest(container_id=cid, cmd=["sleep", "600"], stdout=True)
                )
            ).url
            upgraded = await spdy_upgrade(url)
            assert upgraded.session is not None
            await open_command_streams(upgraded.session, stdin=False, stderr=False)
            sessions.append(upgraded)
        await asyncio.sleep(2)
        after = rss_bytes(pid)
    finally:
        for upgraded in sessions:
            await upgraded.aclose()
    return (after - before) / count


async def run(*, quick: bool, have_crictl: bool) -> dict[str, RuntimeResult]:
    runs = 5 if quick else 40
    size = (8 if quick else 256) * MIB
    idle = 5 if quick else 40
    runtimes: list[Runtime] = [
        Pycri(base=short_temp_dir(prefix="bstr-p-")),
        ContainerdCri(base=short_temp_dir(prefix="bstr-c-")),
    ]
    images = short_temp_dir(prefix="bstr-i-")
    clients: dict[str, CriClient] = {}
    pods: dict[str, tuple[str, str]] = {}
    results: dict[str, RuntimeResult] = {}
    try:
        tarballs = await asyncio.to_thread(build_images, directory=images)
        for index, runtime in enumerate(runtimes):
            runtime.start()
            await runtime.wait_ready()
            await load_images(runtime=runtime, tarballs=tarballs)
            clients[runtime.name] = CriClient(socket=runtime.cri_socket)
            pods[runtime.name] = await _echo_pod(
                clients[runtime.name], name=f"stream-{runtime.name}", port=18000 + index
            )
            results[runtime.name] = RuntimeResult([], [], 0.0, 0.0, 0.0)
        for runtime in runtimes:  # one unmeasured round each: caches, first connections
            await _exec_inprocess(clients[runtime.name], pods[runtime.name][1])
        for round_ in range(runs):
            order = runtimes if round_ % 2 == 0 else runtimes[::-1]
            for runtime in order:
                client, (_, cid) = clients[runtime.name], pods[runtime.name]
                results[runtime.name].exec_inprocess_s.append(await _exec_inprocess(client, cid))
                if have_crictl:
                    results[runtime.name].exec_crictl_s.append(await _exec_crictl(runtime, cid))
        if have_crictl:
            for index, runtime in enumerate(runtimes):
                await wait_for_quiet_machine()
                rate, cpu = await _portforward(runtime, pods[runtime.name][0], 18000 + index, size)
                results[runtime.name].portforward_mib_s = rate
                results[runtime.name].portforward_cpu_s_per_mib = cpu
        for runtime in runtimes:
            results[runtime.name].idle_stream_bytes = await _idle_streams(
                clients[runtime.name], runtime, pods[runtime.name][1], idle
            )
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        for runtime in runtimes:
            runtime.stop()
        shutil.rmtree(images, ignore_errors=True)
    return results


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: dict[str, RuntimeResult], *, size_mib: int) -> str:
    p, c = results["pycri"], results["containerd-cri"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0 else "n/a"

    rows = ["| measure | pycri | containerd-CRI | pycri / containerd-CRI |", "|---|---|---|---|"]
    for label, values_p, values_c in (
        ("exec round trip (in-process client)", p.exec_inprocess_s, c.exec_inprocess_s),
        ("exec round trip (`crictl exec`)", p.exec_crictl_s, c.exec_crictl_s),
    ):
        if not values_p or not values_c:
            continue
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            a, b = _pct(values_p, q), _pct(values_c, q)
            rows.append(f"| {label} {name} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {ratio(a, b)} |")
        a, b = statistics.mean(values_p), statistics.mean(values_c)
        rows.append(f"| {label} mean | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {ratio(a, b)} |")
    if p.portforward_mib_s:
        rows.append(
            f"| port-forward, {size_mib} MiB each way (MiB/s) | {p.portforward_mib_s:.1f} | "
            f"{c.portforward_mib_s:.1f} | {ratio(p.portforward_mib_s, c.portforward_mib_s)} |"
        )
        rows.append(
            f"| streaming server CPU per MiB moved | {p.portforward_cpu_s_per_mib * 1e3:.2f} ms | "
            f"{c.portforward_cpu_s_per_mib * 1e3:.2f} ms | "
            f"{ratio(p.portforward_cpu_s_per_mib, c.portforward_cpu_s_per_mib)} |"
        )
    idle_p, idle_c = p.idle_stream_bytes, c.idle_stream_bytes
    rows.append(
        f"| runtime RSS per idle exec stream | {idle_p / 1024:.0f} KiB | "
        f"{idle_c / 1024:.0f} KiB | {ratio(idle_p, idle_c)} |"
    )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.streaming", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the tool works")
    parser.add_argument("--name", default=time.strftime("%Y-%m-%d", time.gmtime()) + "-streaming")
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if not CRICTL.exists():
        print(f"no crictl at {CRICTL}: crictl exec and port-forward are left out")
    results = asyncio.run(run(quick=args.quick, have_crictl=CRICTL.exists()))
    size_mib = 8 if args.quick else 256
    table = report(results, size_mib=size_mib)
    print(table)
    if not args.quick:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / f"{args.name}.json").write_text(
            json.dumps({name: asdict(r) for name, r in results.items()}, indent=1)
        )
        (args.output_dir / f"{args.name}.md").write_text(
            f"# Streaming: pycri vs containerd's CRI plugin ({args.name})\n\n"
            "`python -m bench.streaming` (bench/streaming.py says what each row is).\n\n" + table
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
