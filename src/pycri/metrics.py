"""Prometheus metrics of the event path, served on ``--metrics-address`` (off by default).

No client library: a few counters, gauges and one histogram rendered in the text format by
a tiny asyncio HTTP server (GET /metrics). Values are read from the live objects at scrape
time (dispatcher stats, monitor count, subscriber drops), so the hot path only records the
exit-handling latency.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            cumulative += n
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.sum}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self.exit_latency = Histogram(
            "pycri_exit_handling_seconds",
            "Time from a process exit (containerd's exited_at) to its status being persisted.",
        )
        self.failures_by_step: dict[str, int] = {}
        # name -> (help, type, reader); registered by the daemon
        self._gauges: dict[str, tuple[str, str, Callable[[], float]]] = {}

    def register(
        self, name: str, help_text: str, read: Callable[[], float], *, kind: str = "gauge"
    ) -> None:
        self._gauges[name] = (help_text, kind, read)

    def step_failed(self, step: str) -> None:
        self.failures_by_step[step] = self.failures_by_step.get(step, 0) + 1

    def render(self) -> str:
        lines = self.exit_latency.render()
        for name, (help_text, kind, read) in sorted(self._gauges.items()):
            try:
                value = read()
            except Exception:  # a broken reader must not break the scrape
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += [
            "# HELP pycri_event_handling_failures_total Failed exit/OOM handling attempts by step.",
            "# TYPE pycri_event_handling_failures_total counter",
        ]
        lines += [
            f'pycri_event_handling_failures_total{{step="{step}"}} {n}'
            for step, n in sorted(self.failures_by_step.items())
        ]
        return "\n".join(lines) + "\n"


class MetricsServer:
    def __init__(self, metrics: Metrics, *, address: str) -> None:
        self.metrics = metrics
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("serving metrics", extra={"address": f"{self.host}:{self.port}"})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                body = self.metrics.render().encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body, head = b"not found\n", b"HTTP/1.1 404 Not Found\r\n"
            writer.write(
                head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
