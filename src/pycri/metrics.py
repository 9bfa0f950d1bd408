"""Prometheus metrics of pycri, served on ``--metrics-address`` (off by default).

Built on ``prometheus_client``, with a registry of its own per daemon (never the library's
global one, so two runtimes in one process never share counters). With metrics off
(``Metrics(enabled=False)``, no ``metrics_address``) the library is never imported (about
3 MiB of pycri's memory): recording is a no-op and readers are only kept.

- recorded on the hot path: the exit-handling latency histogram and the failure counter by
  step, both thread-safe library objects;
- read at scrape time (``LIVE_METRICS``): values of live objects (dispatcher queues, monitor
  count, subscriber drops, ...) through readers the daemon binds by name;
- the library's process collector: RSS, CPU seconds, open fds, start time.

Races: the library serves scrapes from its own HTTP thread, while the live objects belong to
the event loop and change under it (a dict iterated while an exit handler adds to it can
raise). So a scrape does not read them from its thread: it asks the loop for one snapshot
of every reader (``call_soon_threadsafe``) and waits for it, bounded, so a stalled loop
makes a scrape answer without live values instead of hanging. Every metric name, with its
meaning, is listed in docs/operations.md; a test keeps that table complete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SNAPSHOT_TIMEOUT = 2.0  # seconds a scrape waits for the event loop


@dataclass(frozen=True)
class LiveMetric:
    """A value read from a live object at scrape time."""

    name: str
    help: str
    kind: Literal["gauge", "counter"] = "gauge"


LIVE_METRICS = (
    LiveMetric("pycri_backoff_queue_depth", "Events waiting in the per-ID backoff queues."),
    LiveMetric("pycri_backoff_ids", "Objects whose event handling is in backoff."),
    LiveMetric("pycri_event_retries_total", "Retries of event handling, all outcomes.", "counter"),
    LiveMetric("pycri_exit_monitors", "Live exit monitors (one per running task)."),
    LiveMetric("pycri_network_ready", "1 when a valid CNI network config is loaded."),
    LiveMetric(
        "pycri_cni_del_failures_total", "Failed CNI DEL attempts (each is retried).", "counter"
    ),
    LiveMetric(
        "pycri_event_subscribers_dropped_total",
        "GetContainerEvents subscribers dropped for falling behind.",
        "counter",
    ),
    LiveMetric(
        "pycri_containerd_reconnects_total",
        "Re-subscriptions to containerd's event stream.",
        "counter",
    ),
    LiveMetric("pycri_streams_open", "Exec, attach and port-forward sessions open now."),
    LiveMetric("pycri_streams_total", "Exec, attach and port-forward sessions started.", "counter"),
    LiveMetric(
        "pycri_stream_received_bytes_total",
        "Data bytes received from streaming clients (stdin, forwarded ports).",
        "counter",
    ),
    LiveMetric(
        "pycri_stream_sent_bytes_total",
        "Data bytes sent to streaming clients (stdout, stderr, forwarded ports).",
        "counter",
    ),
    LiveMetric(
        "pycri_stream_errors_total",
        "Streaming requests refused (bad, expired or reused tokens, limits) or sessions failed.",
        "counter",
    ),
    LiveMetric("pycri_sandboxes", "Pod sandboxes pycri knows, in any state."),
    LiveMetric("pycri_containers", "Containers pycri knows, in any state."),
    LiveMetric(
        "pycri_undo_pending", "Half-made objects of failed creates whose undo is being retried."
    ),
)
_LIVE_BY_NAME = {m.name: m for m in LIVE_METRICS}

Reader = Callable[[], float]


class _LiveReaders:
    def __init__(self) -> None:
        self.readers: dict[str, Reader] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def _read_all(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, read in list(self.readers.items()):
            try:
                values[name] = float(read())
            except Exception:  # a broken reader must not break the scrape
                log.debug("metric reader failed", exc_info=True, extra={"metric": name})
        return values

    def _snapshot(self) -> dict[str, float]:
        loop = self.loop
        if loop is None or not loop.is_running() or _on_loop_thread(loop):
            return self._read_all()
        result: concurrent.futures.Future[dict[str, float]] = concurrent.futures.Future()

        def read_on_loop() -> None:
            try:
                result.set_result(self._read_all())
            except BaseException as err:  # pragma: no cover - _read_all catches
                result.set_exception(err)

        loop.call_soon_threadsafe(read_on_loop)
        try:
            return result.result(timeout=SNAPSHOT_TIMEOUT)
        except concurrent.futures.TimeoutError:
            log.warning("metrics scrape: event loop did not answer; live values left out")
            return {}

    def collector(self) -> Collector:
        """The live values as a ``prometheus_client`` collector (imports the library)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.registry import Collector

        live = self

        class LiveCollector(Collector):
            def collect(self) -> Iterator[Metric]:
                for name, value in live._snapshot().items():
                    spec = _LIVE_BY_NAME[name]
                    family = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
                    yield family(name, spec.help, value=value)

        return LiveCollector()


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class Metrics:
    """pycri's metrics registry: hot-path recorders plus live readers bound by name."""

    def __init__(self, *, enabled: bool = True) -> None:
        self._live = _LiveReaders()
        self._registry: CollectorRegistry | None = None
        self._exit_latency: Histogram | None = None
        self._failures: Counter | None = None
        if not enabled:
            return
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            ProcessCollector,
            disable_created_metrics,
        )

        # ``*_created`` series (one per counter and histogram) say only when pycri started,
        # which process_start_time_seconds already does: leave them out.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._registry = CollectorRegistry(auto_describe=True)
        self._exit_latency = Histogram(
            "pycri_exit_handling_seconds",
            "Time from a process exit (containerd's exited_at) to its status being persisted.",
            buckets=LATENCY_BUCKETS,
            registry=self._registry,
        )
        self._failures = Counter(
            "pycri_event_handling_failures",
            "Failed exit/OOM handling attempts by step.",
            ["step"],
            registry=self._registry,
        )
        self._registry.register(self._live.collector())
        ProcessCollector(registry=self._registry)

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            raise RuntimeError("metrics are off (no metrics_address)")
        return self._registry

    def exit_handled(self, seconds: float) -> None:
        """One exit's latency from containerd's exited_at to its persisted status."""
        if self._exit_latency is not None:
            self._exit_latency.observe(seconds)

    def bind(self, name: str, read: Reader) -> None:
        """Attach the reader of a live metric (a name of ``LIVE_METRICS``)."""
        if name not in _LIVE_BY_NAME:
            raise KeyError(f"{name} is not a declared live metric")
        self._live.readers[name] = read

    def step_failed(self, step: str) -> None:
        if self._failures is not None:
            self._failures.labels(step=step).inc()

    def render(self) -> str:
        """The text exposition, as a scrape would get it."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry).decode()

    def serve_from(self, loop: asyncio.AbstractEventLoop) -> None:
        """Scrapes from other threads read live values on ``loop``."""
        self._live.loop = loop


class MetricsServer:
    """The library's HTTP exposition server (its own thread) on ``host:port``."""

    def __init__(self, metrics: Metrics, *, address: str) -> None:
        self.metrics = metrics
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        from prometheus_client.exposition import start_http_server

        self.metrics.serve_from(asyncio.get_running_loop())
        server, thread = await asyncio.to_thread(
            start_http_server, self.port, addr=self.host, registry=self.metrics.registry
        )
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])
        log.info("serving metrics", extra={"address": f"{self.host}:{self.port}"})

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)
        await asyncio.to_thread(server.server_close)
