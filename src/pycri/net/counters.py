"""A pod's interface counters, read from its network namespace without entering it.

``/proc/<pid>/net/dev`` shows the interfaces of the network namespace process ``pid`` is in,
so the pause process's file is the pod's, read like any file (no setns, no netlink socket, no
thread pinned to a namespace). Loopback is left out, as cAdvisor does: kubelet and
dashboards count the pod's traffic on its real interfaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "lo"


@dataclass(frozen=True, kw_only=True)
class InterfaceCounters:
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str) -> list[InterfaceCounters]:
    """The interfaces of a ``/proc/net/dev`` text (two header lines, then one per interface:
    8 receive columns, then 8 transmit ones)."""
    interfaces = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 16:
            continue
        try:
            v = [int(f) for f in fields[:16]]
        except ValueError:
            continue
        interfaces.append(
            InterfaceCounters(
                name=name.strip(),
                rx_bytes=v[0],
                rx_packets=v[1],
                rx_errors=v[2],
                rx_dropped=v[3],
                tx_bytes=v[8],
                tx_packets=v[9],
                tx_errors=v[10],
                tx_dropped=v[11],
            )
        )
    return interfaces


def pod_interfaces(pid: int, *, proc: Path = Path("/proc")) -> list[InterfaceCounters]:
    """The counters of every interface but loopback in ``pid``'s network namespace (blocking:
    one small read); empty when the process is gone."""
    try:
        text = (proc / str(pid) / "net" / "dev").read_text()
    except OSError:
        return []
    return [i for i in parse_net_dev(text) if i.name != LOOPBACK]
