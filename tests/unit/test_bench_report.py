"""bench.report and bench.profiling on made-up results: pooling, targets, Markdown, plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import report
from bench.profiling import parse_frame, summarize_collapsed


def _correct(checked: int) -> dict[str, Any]:
    return {"checked": checked, "wrong": 0, "missing": 0, "failed_rpcs": 0, "leaked": 0}


def _lifecycle(runtime: str, concurrency: int, pods_per_second: float, rep: int) -> dict[str, Any]:
    return {
        "rep": rep,
        "runtime": runtime,
        "scenario": "lifecycle",
        "params": {"pods": 2, "concurrency": concurrency},
        "result": {
            "pods": 2,
            "pods_per_second": pods_per_second,
            "rpc_samples": {"RunPodSandbox": [0.05, 0.06], "StopContainer": [0.01, 0.02]},
            "correctness": _correct(4),
        },
    }


def _exits(
    runtime: str, scenario: str, n: int, latencies: list[float], delayed: float | None = None
) -> dict[str, Any]:
    return {
        "rep": 0,
        "runtime": runtime,
        "scenario": scenario,
        "params": {"containers": n},
        "result": {
            "latencies": latencies,
            "exit_to_seen": latencies,
            "delayed_latency": delayed,
            "correctness": {**_correct(len(latencies)), "wrong": 1 if runtime == "x" else 0},
        },
    }


def _rss(runtime: str, loaded_mib: float) -> dict[str, Any]:
    def sample(mib: float) -> dict[str, Any]:
        return {
            "daemon_bytes": int(mib * report.MIB),
            "parts": {"containerd": int(mib * report.MIB)},
            "shim_bytes": 10 * report.MIB,
            "shims": 2,
        }

    return {
        "rep": 0,
        "runtime": runtime,
        "scenario": "rss",
        "params": {"pods": 2},
        "result": {
            "pods": 2,
            "idle": sample(40),
            "loaded": sample(loaded_mib),
            "after_removal": sample(41),
            "correctness": _correct(2),
        },
    }


def _fsinfo(runtime: str, burst: list[float], paced: list[float]) -> dict[str, Any]:
    return {
        "rep": 0,
        "runtime": runtime,
        "scenario": "fsinfo",
        "params": {},
        "result": {
            "burst": burst,
            "paced": paced,
            "pace_seconds": 6.0,
            "correctness": _correct(len(burst) + len(paced)),
        },
    }


def _runs() -> list[dict[str, Any]]:
    p, c = report.PYCRI, report.CONTAINERD
    return [
        _lifecycle(p, 1, 6.0, 0),
        _lifecycle(p, 1, 8.0, 1),
        _lifecycle(p, 1, 7.0, 2),
        _lifecycle(c, 1, 5.0, 0),
        _lifecycle(p, 4, 10.0, 0),
        _lifecycle(c, 4, 12.0, 0),
        _exits(p, "exit-latency", 1, [0.005]),
        _exits(p, "exit-latency", 1, [0.006]),
        _exits(c, "exit-latency", 1, [0.03, 0.03]),
        _exits(p, "exit-latency", 128, [0.1] * 127 + [0.2]),
        _exits(c, "exit-latency", 128, [1.5] * 128),
        _exits(p, "hol", 128, [0.1] * 128, delayed=0.1),
        _exits(c, "hol", 128, [1.6] * 128, delayed=1.0),
        _rss(p, 120.0),
        _rss(c, 90.0),
        _fsinfo(p, [0.001, 0.002, 0.003], [0.002, 0.004]),
        _fsinfo(c, [0.001] * 3, [0.002] * 2),
    ]


def test_runs_are_pooled_per_runtime_and_scenario() -> None:
    summary = report.summarize_runs(_runs())
    lifecycle = summary[report.PYCRI]["lifecycle"]["1"]
    assert lifecycle["pods_per_second"] == 7.0  # the median of the repetitions
    assert lifecycle["pods_per_second_per_rep"] == [6.0, 8.0, 7.0]
    assert lifecycle["rpc"]["RunPodSandbox"]["count"] == 6
    assert lifecycle["correctness"]["checked"] == 12
    single = summary[report.PYCRI]["exit-latency"]["1"]
    assert single["runs"] == 2 and single["latencies"] == [0.005, 0.006]
    assert lifecycle["rpc_p50_per_rep"]["RunPodSandbox"] == [0.055, 0.055, 0.055]
    assert summary[report.PYCRI]["hol"]["128"]["delayed_latencies"] == [0.1]
    assert summary[report.CONTAINERD]["rss"]["loaded_mib"] == 90.0
    assert summary[report.PYCRI]["rss"]["loaded_shims"] == 2
    fsinfo = summary[report.PYCRI]["fsinfo"]
    assert fsinfo["burst"]["p50"] == 0.002 and fsinfo["paced"]["p50"] == 0.003
    assert fsinfo["correctness"]["checked"] == 5


def test_targets_are_ratios_of_one_run() -> None:
    targets = {
        t.name.split(":")[0]: t for t in report.evaluate_targets(report.summarize_runs(_runs()))
    }
    big = targets["exit-latency p99, N=128"]
    assert big.met and math.isclose(
        big.measured,
        report.summarize_runs(_runs())["pycri"]["exit-latency"]["128"]["latency"]["p99"] / 1.5,
    )
    assert targets["exit-latency p99, N=1"].met  # 6 ms vs 30 ms
    assert not targets["exit-latency p99, N=32"].met  # not measured
    hol = targets["hol p99 (N=128 + 1 delayed delete) / pycri's own plain p99, worst repetition"]
    pycri = report.summarize_runs(_runs())["pycri"]
    assert hol.met and math.isclose(
        hol.measured,
        pycri["hol"]["128"]["per_run"][0]["p99"]
        / pycri["exit-latency"]["128"]["per_run"][0]["p99"],
    )
    assert targets["hol"].met  # the delayed one within the hol p99
    assert targets["lifecycle pods/s, C=1"].met  # 7 vs 5: ≥ 1.2
    assert "per repetition: 1.20" in targets["lifecycle pods/s, C=1"].detail  # rep 0: 6 vs 5
    assert not targets["lifecycle pods/s, C=4"].met  # 10 vs 12
    assert targets["RunPodSandbox p50, worst C"].met  # equal samples: 1.0
    assert not targets["RemoveContainer p50, worst C"].met  # not measured
    assert targets["RSS idle"].met  # 40 vs 40
    fsinfo = targets["ImageFsInfo p50, kubelet-paced"]
    assert not fsinfo.met and math.isclose(fsinfo.measured, 0.003 / 0.002)
    memory = targets["RSS with 2 running pods"]
    assert not memory.met and math.isclose(memory.measured, 120 / 90)


def test_a_missing_measurement_is_a_missed_target() -> None:
    targets = report.evaluate_targets(report.summarize_runs([]))
    assert targets and not any(t.met for t in targets)


def test_markdown_report_and_plots(tmp_path: Path) -> None:
    runs = _runs()
    summary = report.summarize_runs(runs)
    plots = report.make_plots(summary, out_dir=tmp_path, stem="t")
    assert [p.name for p in plots] == [
        "t-exit-latency-vs-n.png",
        "t-exit-latency-cdf.png",
        "t-lifecycle-rpc.png",
        "t-rss.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)
    profile = {
        "lifecycle": {
            "summary": summarize_collapsed("main (pycri/cli.py:1);f (pycri/a.py:2) 3\n").to_json()
        }
    }
    text = report.render_markdown(
        {"date": "t", "plan": {"repetitions": 3}, "runs": runs},
        summary=summary,
        targets=report.evaluate_targets(summary),
        plots=plots,
        profile=profile,
    )
    assert "| lifecycle pods/s, C=1 | 7.00 | 5.00 | 1.40 |" in text
    assert "| exit-latency N=128 p50 | 100 ms | 1500 ms | 0.07 |" in text
    assert "**missed**" in text and "| met |" in text
    assert "![t-rss](t-rss.png)" in text
    assert "`f (pycri/a.py:2)`" in text


def test_docs_section_is_replaced_between_markers() -> None:
    doc = f"# B\n\nintro\n\n{report.RESULTS_START}\nold\n{report.RESULTS_END}\n\nafter\n"
    new = report.update_docs_section(doc, section="new table")
    assert "old" not in new and "new table" in new
    assert new.startswith("# B\n\nintro") and new.endswith("after\n")
    appended = report.update_docs_section("# B\n", section="x")
    assert appended.endswith(f"{report.RESULTS_START}\nx\n{report.RESULTS_END}\n")


def test_collapsed_stacks_self_inclusive_and_idle() -> None:
    text = "\n".join(
        [
            "main (pycri/cli.py:10);handle (pycri/events/handlers.py:5);dumps (json/__init__.py:231) 6",
            "main (pycri/cli.py:10);handle (pycri/events/handlers.py:7) 2",
            "main (pycri/cli.py:10);rec (pycri/x.py:1);rec (pycri/x.py:2) 2",
            "_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 50",
            "run (asyncio/base_events.py:607);EpollSelector.select (selectors.py:468) 40",
            "garbage line",
        ]
    )
    summary = summarize_collapsed(text)
    assert (summary.total_samples, summary.idle_samples) == (10, 90)
    assert summary.top_self[0] == ("dumps (json/__init__.py:231)", 6)
    inclusive = dict(summary.top_inclusive_pycri)
    assert inclusive["main (pycri/cli.py)"] == 10
    assert inclusive["handle (pycri/events/handlers.py)"] == 8
    assert inclusive["rec (pycri/x.py)"] == 2  # a recursive function counts once per stack
    frame = parse_frame("Handle._run (/usr/lib/python3.11/asyncio/events.py:80)")
    assert (frame.function, frame.line) == ("Handle._run", 80)
    assert frame.where == "Handle._run (stdlib/asyncio/events.py:80)"


def _pull(runtime: str, scenario: str, seconds: float, rep: int) -> dict[str, Any]:
    return {
        "rep": rep,
        "runtime": runtime,
        "scenario": scenario,
        "params": {"mib": 256, "small_layers": 3, "trial": 0},
        "result": {
            "seconds": seconds,
            "cpu_seconds": seconds / 2,
            "cpu_parts": {"pycri": seconds / 4, "containerd": seconds / 4},
            "bytes": 256 * report.MIB,
            "gc_seconds": 0.1,
            "correctness": _correct(1),
        },
    }


def test_pulls_are_pooled_with_a_p50_per_repetition_and_a_target() -> None:
    p, c = report.PYCRI, report.CONTAINERD
    runs = [
        *(_pull(p, "pull", s, rep) for rep, s in [(0, 2.0), (0, 2.2), (1, 2.4), (1, math.nan)]),
        *(_pull(c, "pull", s, rep) for rep, s in [(0, 3.0), (0, 3.2), (1, 3.0), (1, 3.1)]),
        _pull(c, "ctr-pull", 2.5, 0),
    ]
    summary = report.summarize_runs(runs)
    pulls = summary[p]["pull"]
    assert pulls["trials"] == 4 and pulls["seconds"]["count"] == 3  # a failed pull: no sample
    assert pulls["p50_per_rep"] == [2.1, 2.4] and pulls["seconds"]["p50"] == 2.2
    assert pulls["correctness"]["checked"] == 4 and pulls["mib"] == 256
    assert summary[c]["ctr-pull"]["seconds"]["p50"] == 2.5
    assert summary[p]["pull"]["cpu_seconds"]["p50"] == 1.1
    assert summary[p]["pull"]["cpu_parts_p50"] == {"containerd": 0.55, "pycri": 0.55}
    target = next(t for t in report.evaluate_targets(summary) if t.name.startswith("PullImage"))
    assert math.isclose(target.measured, 2.2 / 3.05) and target.met  # ≤ 0.8
    assert target.detail.endswith(f"per repetition: {2.1 / 3.1:.2f}, {2.4 / 3.05:.2f}")
    rows = {row[0]: row for row in report.comparison_rows(summary)}
    assert rows["PullImage p50 (256 MiB of layers)"][3] == f"{2.2 / 3.05:.2f}"
    assert any(label.startswith("`ctr images pull`") for label in rows)
