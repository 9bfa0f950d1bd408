"""The benchmark scenarios against a real pycri daemon, with tiny sizes.

They check the tool, not pycri's speed: every scenario runs to the end, its correctness
accounting is zero when the runtime is right, and it counts a wrong exit code or a
container that never exits when the runtime (here: a rigged container) gets it wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench import scenarios
from bench.cri import CriClient
from bench.daemons import rss_bytes
from tests.integration.helpers import Daemon, import_test_images


@pytest.fixture(scope="module")
async def bench_daemon() -> AsyncIterator[tuple[Daemon, CriClient]]:
    from tests.integration.helpers import short_tmp

    daemon = Daemon(base=short_tmp("pycri-b-"), extra_args=["--enable-fault-injection"])
    daemon.start()
    client = CriClient(socket=daemon.socket)
    try:
        await import_test_images(daemon.containerd_socket)
        yield daemon, client
    finally:
        await client.close()
        daemon.cleanup()


async def test_lifecycle_counts_pods_and_times_every_rpc(bench_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, client = bench_daemon
    result = await scenarios.run_lifecycle(
        client=client, pods=2, concurrency=1, run_label="t-lc", work_dir=tmp_path
    )
    assert result.correctness.to_json()["ok"], result.correctness.messages
    assert result.completed == 2 and result.pods_per_second > 0
    assert result.correctness.checked == 4  # RUNNING after start, EXITED 0 after stop
    assert {name: len(s) for name, s in result.rpc_seconds.items()} == dict.fromkeys(
        scenarios.LIFECYCLE_RPCS, 2
    )


async def test_exit_latency_and_hol_account_for_every_container(
    bench_daemon, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    _, client = bench_daemon
    plain = await scenarios.run_exit_latency(
        client=client, containers=2, run_label="t-exit", work_dir=tmp_path, settle_seconds=0.3
    )
    assert plain.correctness.ok, plain.correctness.messages
    assert plain.correctness.checked == 2 and len(plain.latencies) == 2
    assert all(0 < s < 10 for s in plain.latencies) and len(plain.exit_to_seen) == 2
    assert plain.delayed_latency is None

    hol = await scenarios.run_exit_latency(
        client=client,
        containers=2,
        run_label="t-hol",
        work_dir=tmp_path,
        settle_seconds=0.3,
        delayed_labels={scenarios.FAULT_DELETE_DELAY_LABEL: "30"},
    )
    assert hol.correctness.ok, hol.correctness.messages
    assert hol.correctness.checked == 3 and len(hol.latencies) == 2
    # the delayed delete never holds up the report of its own exit
    assert hol.delayed_latency is not None and hol.delayed_latency < 5


async def test_wrong_and_missing_exits_are_counted(  # type: ignore[no-untyped-def]
    bench_daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = bench_daemon
    # Containers that exit with a code other than the one the runner expects: wrong.
    monkeypatch.setattr(
        scenarios, "wait_for_release", lambda *, exit_code: "read x < /shared/go; exit 99"
    )
    wrong = await scenarios.run_exit_latency(
        client=client, containers=2, run_label="t-wrong", work_dir=tmp_path, settle_seconds=0.3
    )
    assert (wrong.correctness.wrong, wrong.correctness.missing) == (2, 0)
    assert wrong.correctness.leaked == 0
    # Containers that never exit: missing, and still removed at the end.
    monkeypatch.setattr(scenarios, "wait_for_release", lambda *, exit_code: "sleep 3600")
    missing = await scenarios.run_exit_latency(
        client=client,
        containers=2,
        run_label="t-missing",
        work_dir=tmp_path,
        settle_seconds=0.1,
        timeout_seconds=0.5,
    )
    assert (missing.correctness.wrong, missing.correctness.missing) == (0, 2)
    assert missing.correctness.leaked == 0 and not missing.correctness.ok


async def test_rss_samples_idle_loaded_and_after(bench_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daemon, client = bench_daemon
    assert daemon.proc is not None
    pid = daemon.proc.pid

    async def sample() -> dict[str, Any]:
        return {"daemon_bytes": rss_bytes(pid)}

    result = await scenarios.run_rss(
        client=client,
        pods=2,
        concurrency=2,
        run_label="t-rss",
        work_dir=tmp_path,
        sample_memory=sample,
        settle_seconds=0.1,
    )
    assert result.correctness.ok, result.correctness.messages
    assert result.running_when_loaded == 2
    assert result.idle["daemon_bytes"] > 10 << 20
    assert result.loaded["daemon_bytes"] > 0 and result.after_removal["daemon_bytes"] > 0
