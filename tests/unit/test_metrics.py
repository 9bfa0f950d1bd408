"""Metrics: the prometheus_client registry, live readers, and scrapes from the server thread."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest

from pycri.metrics import LIVE_METRICS, Metrics, MetricsServer


def _value(body: str, name: str) -> float:
    line = next(ln for ln in body.splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


def test_recorded_live_and_process_metrics_render() -> None:
    metrics = Metrics()
    metrics.exit_handled(0.02)
    metrics.step_failed("delete_task")
    metrics.step_failed("delete_task")
    metrics.bind("pycri_exit_monitors", lambda: 7)
    metrics.bind("pycri_containerd_reconnects_total", lambda: 3)
    body = metrics.render()
    assert _value(body, "pycri_exit_handling_seconds_count") == 1
    assert 'pycri_exit_handling_seconds_bucket{le="0.025"} 1.0' in body
    assert 'pycri_event_handling_failures_total{step="delete_task"} 2.0' in body
    assert _value(body, "pycri_exit_monitors") == 7
    assert _value(body, "pycri_containerd_reconnects_total") == 3
    assert "# TYPE pycri_containerd_reconnects_total counter" in body
    assert _value(body, "process_resident_memory_bytes") > 0
    assert "process_open_fds" in body


def test_a_broken_reader_leaves_the_others() -> None:
    metrics = Metrics()
    metrics.bind("pycri_exit_monitors", lambda: 1 / 0)
    metrics.bind("pycri_backoff_ids", lambda: 2)
    body = metrics.render()
    assert "pycri_exit_monitors " not in body
    assert _value(body, "pycri_backoff_ids") == 2


def test_only_declared_live_metrics_bind() -> None:
    with pytest.raises(KeyError):
        Metrics().bind("pycri_made_up", lambda: 1)
    assert len({m.name for m in LIVE_METRICS}) == len(LIVE_METRICS)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def test_scrape_reads_live_values_on_the_loop_thread() -> None:
    metrics = Metrics()
    threads: list[bool] = []

    def reader() -> float:
        try:
            asyncio.get_running_loop()
            threads.append(True)
        except RuntimeError:
            threads.append(False)
        return 5

    metrics.bind("pycri_sandboxes", reader)
    server = MetricsServer(metrics, address="127.0.0.1:0")
    await server.start()
    try:
        body = await asyncio.to_thread(_scrape, server.port)
    finally:
        await server.stop()
    assert _value(body, "pycri_sandboxes") == 5
    assert threads == [True]  # read by the event loop, not by the HTTP thread


async def test_a_stalled_loop_does_not_hang_a_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pycri.metrics.SNAPSHOT_TIMEOUT", 0.2)
    metrics = Metrics()
    metrics.bind("pycri_sandboxes", lambda: 5)
    server = MetricsServer(metrics, address="127.0.0.1:0")
    await server.start()
    try:
        scrape = asyncio.get_running_loop().run_in_executor(None, _scrape, server.port)
        time.sleep(1.0)  # the loop is blocked: the scrape must give up on live values
        body = await scrape
    finally:
        await server.stop()
    assert "pycri_sandboxes " not in body
    assert "process_resident_memory_bytes" in body


def test_metrics_off_never_import_prometheus_and_record_nothing() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pycri.metrics import Metrics; m = Metrics(enabled=False); "
        "m.exit_handled(0.1); m.step_failed('persist'); m.bind('pycri_sandboxes', lambda: 1); "
        "assert 'prometheus_client' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(RuntimeError, match="metrics are off"):
        Metrics(enabled=False).render()
