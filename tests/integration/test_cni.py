"""Issue 7: pod networking with CNI, on Debian's plugins (``/usr/lib/cni``).

Every test writes its own network config into a temp dir (bridge + host-local + portmap +
loopback, like ``examples/cni/10-pycri.conflist``) with a bridge name and a /24 of
10.99.0.0/16 that no other test or concurrent run uses, and host-local's data dir in the
temp dir, so allocations can be inspected and nothing touches the node's real CNI state.
Traffic stays on this machine: pod to pod over the bridge, host to pod through portmap's
DNAT on the node's own address. The bridge is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.integration.helpers import (
    CRI,
    DEBIAN_CNI,
    Daemon,
    Net,
    eventually,
    import_test_images,
)
from tests.integration.pods import container_config, pod_config

pytestmark = pytest.mark.skipif(
    not (DEBIAN_CNI / "bridge").exists(), reason="containernetworking-plugins not installed"
)


@dataclass
class Node:
    daemon: Daemon
    cri: CRI
    configs: dict[str, api_pb2.PodSandboxConfig]

    async def network_condition(self) -> api_pb2.RuntimeCondition:
        resp = await self.cri.runtime.Status(api_pb2.StatusRequest())
        return {c.type: c for c in resp.status.conditions}["NetworkReady"]

    async def run_pod(self, name: str, **kwargs: Any) -> str:
        config = pod_config(f"{name}-{time.monotonic_ns()}", **kwargs)
        resp = await self.cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
        self.configs[resp.pod_sandbox_id] = config
        return str(resp.pod_sandbox_id)

    async def pod_status(self, pod_id: str) -> api_pb2.PodSandboxStatus:
        resp = await self.cri.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        )
        return resp.status

    async def start(self, pod_id: str, config: api_pb2.ContainerConfig) -> str:
        resp = await self.cri.runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=self.configs[pod_id]
            )
        )
        await self.cri.runtime.StartContainer(
            api_pb2.StartContainerRequest(container_id=resp.container_id)
        )
        return str(resp.container_id)

    async def exec(self, container_id: str, *cmd: str) -> api_pb2.ExecSyncResponse:
        return await self.cri.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=20)
        )

    async def stop_pod(self, pod_id: str) -> None:
        await self.cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    async def remove_pod(self, pod_id: str) -> None:
        await self.stop_pod(pod_id)
        await self.cri.runtime.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        )

    async def pods(self) -> list[str]:
        resp = await self.cri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest())
        return [p.id for p in resp.items]

    def netns_pins(self) -> list[str]:
        netns_dir = self.daemon.state / "netns"
        return sorted(p.name for p in netns_dir.iterdir()) if netns_dir.is_dir() else []


@pytest.fixture
async def node(make_daemon: type[Daemon], net: Net) -> AsyncIterator[Node]:
    net.write(net.conflist(flaky=True))
    d = make_daemon(net.daemon_args())
    d.start()
    await import_test_images(d.containerd_socket)
    n = Node(d, CRI(d.socket), {})
    try:
        yield n
    finally:
        net.clear_flags()
        with contextlib.suppress(grpc.aio.AioRpcError):
            for pod_id in await n.pods():
                await n.remove_pod(pod_id)
        await n.cri.close()


def http_server(text: str, port: int = 8080) -> str:
    return f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www"


def http_get_in_pod(ip: str, port: int = 8080) -> str:
    """An HTTP GET with busybox nc (Debian's static busybox wget crashes: SIGSEGV)."""
    return f"printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}"


def node_ip() -> str:
    """This machine's own first global IPv4 address (traffic to it never leaves the node)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True
    ).stdout
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            if not link["ifname"].startswith(("pycri", "cni", "veth")):
                return str(addr["local"])
    return "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


async def http_get(host: str, port: int) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
    try:
        writer.write(f"GET /index.html HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        return (await asyncio.wait_for(reader.read(), 5)).decode(errors="replace")
    finally:
        writer.close()


def nat_rules_mentioning(ids: list[str]) -> list[str]:
    out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if any(i in line for i in ids)]


# --- tests ---------------------------------------------------------------------------------


async def test_two_pods_get_distinct_ips_and_talk(node: Node, net: Net) -> None:
    condition = await node.network_condition()
    assert condition.status is True, condition.message
    server_pod = await node.run_pod("server")
    client_pod = await node.run_pod("client")
    server_ip = (await node.pod_status(server_pod)).network.ip
    client_ip = (await node.pod_status(client_pod)).network.ip
    prefix = f"10.99.{net.octet}."
    assert server_ip.startswith(prefix) and client_ip.startswith(prefix)
    assert server_ip != client_ip
    assert sorted(net.allocated_ips()) == sorted([server_ip, client_ip])
    assert len(net.bridge_ports()) == 2

    server = await node.start(server_pod, container_config("web", http_server("hello-pod")))
    client = await node.start(client_pod, container_config("cli", "exec sleep 3600"))
    addr = await node.exec(client, "ip", "-4", "-o", "addr", "show", "eth0")
    assert f"inet {client_ip}/24" in addr.stdout.decode()
    lo = await node.exec(client, "ip", "-o", "link", "show", "lo")
    assert "UP" in lo.stdout.decode()

    async def fetched() -> str:
        out = await node.exec(client, "sh", "-c", http_get_in_pod(server_ip))
        return out.stdout.decode() if out.exit_code == 0 else ""

    assert "hello-pod" in await eventually(fetched, timeout=15)
    # and the other way round, a bare TCP server in the client pod
    await node.exec(client, "sh", "-c", "nc -l -p 9000 -e echo pong >/dev/null 2>&1 &")

    async def ponged() -> str:
        out = await node.exec(server, "sh", "-c", f"nc -w 2 {client_ip} 9000 </dev/null")
        return out.stdout.decode()

    assert (await eventually(ponged, timeout=15)).strip() == "pong"


async def test_host_port_reaches_the_pod_from_the_host(node: Node, net: Net) -> None:
    host_port = free_port()
    pod = await node.run_pod("ported")
    await node.remove_pod(pod)  # warm-up: a pod without mappings leaves no rules either
    config = pod_config(f"hp-{time.monotonic_ns()}")
    config.port_mappings.add(container_port=8080, host_port=host_port, protocol=api_pb2.TCP)
    config.port_mappings.add(container_port=8081)  # no host port: informational only
    resp = await node.cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    pod = resp.pod_sandbox_id
    node.configs[pod] = config
    await node.start(pod, container_config("web", http_server("hello-host")))
    assert nat_rules_mentioning([pod]), "portmap installed no DNAT rule for the pod"
    host = node_ip()

    async def fetched_from(address: str) -> str:
        try:
            return await http_get(address, host_port)
        except OSError:
            return ""

    assert "hello-host" in await eventually(lambda: fetched_from(host), timeout=15)
    assert "hello-host" in await eventually(lambda: fetched_from("127.0.0.1"), timeout=15)
    await node.remove_pod(pod)
    assert nat_rules_mentioning([pod]) == []
    assert await fetched_from(host) == ""


async def test_thirty_pods_leave_no_veth_ip_or_netns_behind(node: Node, net: Net) -> None:
    count = 30
    slots = asyncio.Semaphore(10)

    async def one(i: int) -> str:
        async with slots:
            return await node.run_pod(f"many{i}")

    started = time.monotonic()
    pods = await asyncio.gather(*(one(i) for i in range(count)))
    created_s = time.monotonic() - started
    ips = [(await node.pod_status(p)).network.ip for p in pods]
    assert len(set(ips)) == count and all(ip.startswith(f"10.99.{net.octet}.") for ip in ips)
    assert len(net.allocated_ips()) == count
    assert len(net.bridge_ports()) == count
    assert len(node.netns_pins()) == count

    async def gone(pod_id: str) -> None:
        async with slots:
            await node.remove_pod(pod_id)

    started = time.monotonic()
    await asyncio.gather(*(gone(p) for p in pods))
    removed_s = time.monotonic() - started
    print(f"\n{count} pods with CNI: created in {created_s:.2f}s, removed in {removed_s:.2f}s")
    assert await node.pods() == []
    assert net.allocated_ips() == []
    assert net.bridge_ports() == []
    assert node.netns_pins() == []
    assert nat_rules_mentioning(pods) == []


async def test_missing_plugin_makes_network_not_ready_and_pods_refused(
    make_daemon: type[Daemon], net: Net
) -> None:
    doc = net.conflist()
    doc["plugins"][0]["ipam"]["type"] = "no-such-ipam"
    net.write(doc)
    d = make_daemon(net.daemon_args())
    d.start()
    await import_test_images(d.containerd_socket)
    n = Node(d, CRI(d.socket), {})
    try:
        condition = await n.network_condition()
        assert condition.status is False
        assert condition.reason == "NetworkPluginNotReady"
        assert "no-such-ipam" in condition.message
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await n.run_pod("refused")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no-such-ipam not found" in (err.value.details() or "")
        assert await n.pods() == [] and n.netns_pins() == []
        # host-network pods need no CNI and still run
        host_pod = await n.run_pod("hostnet", host_network=True)
        await n.remove_pod(host_pod)
    finally:
        await n.cri.close()


async def wait_for_network(node: Node, name: str) -> None:
    async def loaded() -> bool:
        resp = await node.cri.runtime.Status(api_pb2.StatusRequest(verbose=True))
        return bool(json.loads(resp.info["cni"])["network"] == name)

    await eventually(loaded, timeout=10, interval=0.05)


async def test_failing_add_rolls_back_with_the_plugins_error(node: Node, net: Net) -> None:
    doc = net.conflist(ipam_subnet="10.99.999.0/24")  # parses; host-local refuses it
    doc["name"] += "-bad"
    net.write(doc)
    await wait_for_network(node, doc["name"])
    assert (await node.network_condition()).status is True  # only ADD can tell
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.run_pod("broken")
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.UNKNOWN, details
    assert 'plugin type="bridge" failed (add)' in details and "10.99.999.0/24" in details
    assert await node.pods() == []
    assert node.netns_pins() == []
    assert net.bridge_ports() == []  # the veth went with the namespace
    assert net.allocated_ips() == []
    assert "rollback halted" not in node.daemon.log()


async def test_failed_add_whose_del_fails_keeps_the_sandbox_for_cleanup(
    node: Node, net: Net
) -> None:
    net.fail_add.touch()
    net.fail_del.touch()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.run_pod("halted")
    assert "flaky refuses ADD" in (err.value.details() or "")
    # the DEL of a plugin whose ADD had completed failed: nothing it needs is deleted
    [kept] = await node.pods()
    assert (await node.pod_status(kept)).state == api_pb2.SANDBOX_NOTREADY
    assert node.netns_pins() == [kept]
    assert "rollback halted" in node.daemon.log()
    net.clear_flags()
    await node.remove_pod(kept)
    assert await node.pods() == [] and node.netns_pins() == []
    assert net.allocated_ips() == [] and net.bridge_ports() == []


async def test_pycri_killed_during_add_leaves_nothing_after_restart(node: Node, net: Net) -> None:
    net.hang_add.touch()
    run = asyncio.create_task(node.run_pod("crashy"))

    async def allocated() -> list[str]:
        return net.allocated_ips()

    [ip] = await eventually(allocated, timeout=15)  # bridge, portmap, loopback done
    node.daemon.stop(signal.SIGKILL)  # while the last plugin's ADD hangs
    with pytest.raises(grpc.aio.AioRpcError):
        await run
    await node.cri.close()
    node.daemon.start()
    node.cri = CRI(node.daemon.socket)
    net.clear_flags()  # the orphaned plugin process finishes
    # The create never completed: recovery does not load the half-made pod, and the undo
    # journal releases what its ADD took, with the network config stored in its record
    # (written before ADD).
    assert await node.pods() == []

    async def released() -> bool:
        return net.allocated_ips() == [] and net.bridge_ports() == [] and node.netns_pins() == []

    assert ip
    await eventually(released, timeout=20)


async def test_config_changes_are_picked_up_without_restart(
    make_daemon: type[Daemon], net: Net
) -> None:
    d = make_daemon(net.daemon_args())  # no config yet: degraded mode
    d.start()
    await import_test_images(d.containerd_socket)
    n = Node(d, CRI(d.socket), {})
    try:
        condition = await n.network_condition()
        assert condition.status is False and "no network config" in condition.message
        lonely = await n.run_pod("loopback-only")  # still runs: loopback only, no IP
        assert (await n.pod_status(lonely)).network.ip == ""
        written = time.monotonic()
        net.write(net.conflist())

        async def ready() -> bool:
            return bool((await n.network_condition()).status)

        await eventually(ready, timeout=10, interval=0.05)
        pickup_s = time.monotonic() - written
        print(f"\nCNI config picked up {pickup_s:.2f}s after it was written")
        pod = await n.run_pod("networked")
        assert (await n.pod_status(pod)).network.ip.startswith(f"10.99.{net.octet}.")
        net.write("{ not json")

        async def broken() -> str:
            c = await n.network_condition()
            return c.message if not c.status else ""

        assert "invalid JSON" in await eventually(broken, timeout=10, interval=0.05)
        # the pod set up with the old config is torn down with it
        await n.remove_pod(pod)
        await n.remove_pod(lonely)
        assert net.allocated_ips() == [] and net.bridge_ports() == []
        (net.conf_dir / "10-pycri.conflist").unlink()

        async def absent() -> str:
            c = await n.network_condition()
            return c.message if "no network config" in c.message else ""

        await eventually(absent, timeout=10, interval=0.05)
    finally:
        await n.cri.close()


async def test_failing_del_is_retried_reported_and_never_blocks_removal(
    node: Node, net: Net
) -> None:
    pod = await node.run_pod("flaky")
    assert (await node.pod_status(pod)).network.ip
    net.fail_del.touch()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await node.stop_pod(pod)
    details = err.value.details() or ""
    assert "flaky says try later" in details and "3 attempts" in details
    assert node.netns_pins() == [pod]  # kept for the next DEL
    # the other plugins' DELs ran anyway: no IP or veth held by the failing one's sake
    assert net.allocated_ips() == [] and net.bridge_ports() == []
    net.fail_del.unlink()
    await node.stop_pod(pod)  # retried by the caller: now it works
    assert node.netns_pins() == []
    assert (await node.pod_status(pod)).network.ip == ""
    await node.remove_pod(pod)

    stuck = await node.run_pod("stuck")
    net.fail_del.touch()
    failures = 0
    for _ in range(10):  # like kubelet: StopPodSandbox until it succeeds, then Remove
        try:
            await node.remove_pod(stuck)
            break
        except grpc.aio.AioRpcError:
            failures += 1
    assert failures == 3  # sandbox_stop.GIVE_UP_AFTER
    assert await node.pods() == [] and node.netns_pins() == []
    assert "giving up pod network teardown" in node.daemon.log()


async def test_network_survives_restart_and_lost_netns_pin_is_repinned(
    node: Node, net: Net
) -> None:
    pod = await node.run_pod("survivor")
    ip = (await node.pod_status(pod)).network.ip
    web = await node.start(pod, container_config("web", http_server("still-here")))
    await node.cri.close()
    node.daemon.stop(signal.SIGKILL)
    pin = node.daemon.state / "netns" / pod
    subprocess.run(["umount", str(pin)], check=True)  # lose the pin while pycri is down
    pin.unlink()
    node.daemon.start()
    node.cri = CRI(node.daemon.socket)
    status = await node.pod_status(pod)
    assert status.state == api_pb2.SANDBOX_READY and status.network.ip == ip
    assert node.netns_pins() == [pod]
    assert "re-pinned from the pause process" in node.daemon.log()
    out = await node.exec(web, "sh", "-c", http_get_in_pod(ip))
    assert "still-here" in out.stdout.decode()
    await node.remove_pod(pod)
    assert net.allocated_ips() == [] and net.bridge_ports() == []
