"""From the runner's raw results to what a reader sees: summary, targets, Markdown, plots.

The results document (``bench/results/<date>.json``) holds every run of every scenario with
its raw samples. ``summarize_runs`` pools the samples of the repetitions per runtime and
scenario (latencies are pooled, then summarized; pods per second is the median of the
repetitions), ``evaluate_targets`` checks the issue's targets as ratios pycri /
containerd-CRI of one run, and ``render_markdown`` and ``make_plots`` write the report.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.stats import ratio, summarize

PYCRI = "pycri"
CONTAINERD = "containerd-cri"
RUNTIMES = (PYCRI, CONTAINERD)
RUNTIME_TITLES = {PYCRI: "pycri", CONTAINERD: "containerd-CRI"}
MIB = 1024 * 1024
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
NO_VALUE = "\u2013"  # an en dash: no measurement
SETTLE_CAP_SECONDS = 15.0  # bench.daemons.wait_for_quiet_machine's default


# --- pooling the repetitions -------------------------------------------------------------


def _add_correctness(total: dict[str, int], part: dict[str, Any]) -> None:
    for key in ("checked", "wrong", "missing", "failed_rpcs", "leaked"):
        total[key] = total.get(key, 0) + int(part.get(key, 0))


def summarize_runs(runs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per runtime: lifecycle (by concurrency), exit-latency (by N), hol, rss."""
    lifecycle: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    exits: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    rss: dict[str, list[dict[str, Any]]] = defaultdict(list)
    fsinfo: dict[str, list[dict[str, Any]]] = defaultdict(list)
    pulls: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        runtime, scenario, result = run["runtime"], run["scenario"], run["result"]
        if scenario == "lifecycle":
            lifecycle[(runtime, int(run["params"]["concurrency"]))].append(result)
        elif scenario in ("exit-latency", "hol"):
            exits[(runtime, scenario, int(run["params"]["containers"]))].append(
                {**result, "rep": run.get("rep", 0)}
            )
        elif scenario == "rss":
            rss[runtime].append(result)
        elif scenario == "fsinfo":
            fsinfo[runtime].append(result)
        elif scenario in PULL_SCENARIOS:
            pulls[(runtime, scenario)].append({**result, "rep": run.get("rep", 0)})
    summary: dict[str, Any] = {
        r: {"lifecycle": {}, "exit-latency": {}, "hol": {}, "rss": {}} for r in RUNTIMES
    }
    for (runtime, concurrency), results in sorted(lifecycle.items()):
        rpc_samples: dict[str, list[float]] = defaultdict(list)
        correctness: dict[str, int] = {}
        for result in results:
            for name, samples in result["rpc_samples"].items():
                rpc_samples[name].extend(samples)
            _add_correctness(correctness, result["correctness"])
        per_rep = [float(r["pods_per_second"]) for r in results]
        p50_per_rep: dict[str, list[float]] = defaultdict(list)
        for result in results:
            for name, samples in result["rpc_samples"].items():
                p50_per_rep[name].append(summarize(samples).p50)
        summary.setdefault(runtime, {})["lifecycle"][str(concurrency)] = {
            "pods": results[0]["pods"],
            "pods_per_second": statistics.median(per_rep),
            "pods_per_second_per_rep": per_rep,
            "rpc": {name: summarize(s).to_json() for name, s in rpc_samples.items()},
            "rpc_p50_per_rep": dict(p50_per_rep),
            "correctness": correctness,
        }
    for (runtime, scenario, containers), results in sorted(exits.items()):
        latencies: list[float] = []
        exit_to_seen: list[float] = []
        delayed: list[float | None] = []
        correctness = {}
        for result in results:
            latencies.extend(result["latencies"])
            exit_to_seen.extend(result["exit_to_seen"])
            if scenario == "hol":
                delayed.append(result["delayed_latency"])
            _add_correctness(correctness, result["correctness"])
        per_run = [
            {
                "rep": r["rep"],
                "p50": summarize(r["latencies"]).p50,
                "p99": summarize(r["latencies"]).p99,
            }
            for r in results
        ]
        entry = {
            "runs": len(results),
            "per_run": per_run,
            "latency": summarize(latencies).to_json(),
            "exit_to_seen": summarize(exit_to_seen).to_json(),
            "latencies": sorted(latencies),
            "correctness": correctness,
        }
        if scenario == "hol":
            entry["delayed_latencies"] = delayed
        summary.setdefault(runtime, {})[scenario][str(containers)] = entry
    for runtime, results in rss.items():
        result = results[-1]
        summary.setdefault(runtime, {})["rss"] = {
            "pods": result["pods"],
            "idle_mib": result["idle"]["daemon_bytes"] / MIB,
            "loaded_mib": result["loaded"]["daemon_bytes"] / MIB,
            "after_mib": result["after_removal"]["daemon_bytes"] / MIB,
            "loaded_parts_mib": {k: v / MIB for k, v in result["loaded"]["parts"].items()},
            "loaded_pss_mib": result["loaded"].get("daemon_pss_bytes", math.nan) / MIB,
            "loaded_shims": result["loaded"]["shims"],
            "loaded_shim_mib": result["loaded"]["shim_bytes"] / MIB,
            "correctness": result["correctness"],
        }
    for runtime, results in fsinfo.items():
        correctness = {}
        for result in results:
            _add_correctness(correctness, result["correctness"])
        summary.setdefault(runtime, {})["fsinfo"] = {
            mode: summarize([s for r in results for s in r[mode]]).to_json()
            for mode in ("burst", "paced")
        } | {"pace_seconds": results[0]["pace_seconds"], "correctness": correctness}
    for (runtime, scenario), results in sorted(pulls.items()):
        summary.setdefault(runtime, {})[scenario] = _summarize_pulls(results)
    return summary


PULL_SCENARIOS = ("pull", "ctr-pull")


def _summarize_pulls(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds of every successful pull, pooled, and the p50 of each repetition."""
    by_rep: dict[int, list[float]] = defaultdict(list)
    cpu: list[float] = []
    cpu_parts: dict[str, list[float]] = defaultdict(list)
    correctness: dict[str, int] = {}
    for result in results:
        if not math.isnan(result["seconds"]):
            by_rep[int(result["rep"])].append(result["seconds"])
        if not math.isnan(result.get("cpu_seconds", math.nan)):
            cpu.append(result["cpu_seconds"])
            for name, seconds in result.get("cpu_parts", {}).items():
                cpu_parts[name].append(seconds)
        _add_correctness(correctness, result["correctness"])
    pooled = [s for samples in by_rep.values() for s in samples]
    return {
        "trials": len(results),
        "seconds": summarize(pooled).to_json(),
        "cpu_seconds": summarize(cpu).to_json(),
        "cpu_parts_p50": {name: summarize(v).p50 for name, v in sorted(cpu_parts.items())},
        "p50_per_rep": [summarize(by_rep[rep]).p50 for rep in sorted(by_rep)],
        "mib": results[0]["bytes"] / MIB if results else math.nan,
        "correctness": correctness,
    }


# --- targets -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    measured: float
    bound: float
    at_most: bool  # measured ≤ bound (else measured ≥ bound)
    detail: str

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured <= self.bound if self.at_most else self.measured >= self.bound

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def _get(summary: dict[str, Any], *path: str) -> float:
    node: Any = summary
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return math.nan
        node = node[key]
    return float(node) if isinstance(node, int | float) and node is not None else math.nan


#: The lifecycle RPCs whose p50 the targets bound (issue 17: ≤ containerd-CRI's at every C).
TARGET_RPCS = (
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "RemovePodSandbox",
)


def _spread(values: Sequence[float]) -> str:
    """Per-repetition values as ``a, b, c``."""
    return ", ".join(_ratio_text(v) for v in values) if values else NO_VALUE


def _paired_ratios(mine: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """Repetition i of pycri over repetition i of containerd-CRI."""
    return [ratio(p, c) for p, c in zip(mine, theirs, strict=False)]


def _hol_ratios_per_rep(summary: dict[str, Any], hol_size: int) -> list[float]:
    """Each repetition's hol p99 over the same repetition's plain p99 (pycri alone)."""
    entries = summary.get(PYCRI, {})
    plain = {
        r["rep"]: r["p99"]
        for r in entries.get("exit-latency", {}).get(str(hol_size), {}).get("per_run", [])
    }
    hol = {
        r["rep"]: r["p99"] for r in entries.get("hol", {}).get(str(hol_size), {}).get("per_run", [])
    }
    return [ratio(hol[rep], plain[rep]) for rep in sorted(hol) if rep in plain]


def evaluate_targets(summary: dict[str, Any], *, hol_size: int = 128) -> list[Target]:
    """The issue's targets, each as a ratio (or a bound) measured in this run; the detail
    gives the values behind it and, where there are repetitions, each repetition's ratio."""
    targets = []
    for n in (1, 32, 128):
        p = _get(summary, PYCRI, "exit-latency", str(n), "latency", "p99")
        c = _get(summary, CONTAINERD, "exit-latency", str(n), "latency", "p99")
        targets.append(
            Target(
                name=f"exit-latency p99, N={n}: pycri / containerd-CRI",
                measured=ratio(p, c),
                bound=0.25,
                at_most=True,
                detail=f"{_ms(p)} vs {_ms(c)}",
            )
        )
    per_rep = _hol_ratios_per_rep(summary, hol_size)
    targets.append(
        Target(
            name=f"hol p99 (N={hol_size} + 1 delayed delete) / pycri's own plain p99, "
            "worst repetition",
            measured=max(per_rep) if per_rep else math.nan,
            bound=1.1,
            at_most=True,
            detail=f"per repetition: {_spread(per_rep)}",
        )
    )
    hol = _get(summary, PYCRI, "hol", str(hol_size), "latency", "p99")
    delayed = summary.get(PYCRI, {}).get("hol", {}).get(str(hol_size), {}).get("delayed_latencies")
    worst_delayed = (
        max((d if d is not None else math.inf) for d in delayed) if delayed else math.nan
    )
    targets.append(
        Target(
            name="hol: the delayed container's EXITED latency / hol p99",
            measured=ratio(worst_delayed, hol),
            bound=1.0,
            at_most=True,
            detail=f"{_ms(worst_delayed)} (worst of {len(delayed or [])}) vs {_ms(hol)}",
        )
    )
    lifecycle_p = summary.get(PYCRI, {}).get("lifecycle", {})
    lifecycle_c = summary.get(CONTAINERD, {}).get("lifecycle", {})
    for concurrency in sorted(lifecycle_p, key=int) or ["1"]:
        p = _get(summary, PYCRI, "lifecycle", concurrency, "pods_per_second")
        c = _get(summary, CONTAINERD, "lifecycle", concurrency, "pods_per_second")
        reps = _paired_ratios(
            lifecycle_p.get(concurrency, {}).get("pods_per_second_per_rep", []),
            lifecycle_c.get(concurrency, {}).get("pods_per_second_per_rep", []),
        )
        targets.append(
            Target(
                name=f"lifecycle pods/s, C={concurrency}: pycri / containerd-CRI",
                measured=ratio(p, c),
                bound=1.2,
                at_most=False,
                detail=f"{p:.2f} vs {c:.2f} pods/s; per repetition: {_spread(reps)}",
            )
        )
    for rpc in TARGET_RPCS:
        worst = math.nan if not lifecycle_p else -math.inf
        parts = []
        for concurrency in sorted(lifecycle_p, key=int):
            p = _get(summary, PYCRI, "lifecycle", concurrency, "rpc", rpc, "p50")
            c = _get(summary, CONTAINERD, "lifecycle", concurrency, "rpc", rpc, "p50")
            value = ratio(p, c)
            worst = math.nan if math.isnan(value) or math.isnan(worst) else max(worst, value)
            reps = _paired_ratios(
                lifecycle_p.get(concurrency, {}).get("rpc_p50_per_rep", {}).get(rpc, []),
                lifecycle_c.get(concurrency, {}).get("rpc_p50_per_rep", {}).get(rpc, []),
            )
            parts.append(
                f"C={concurrency}: {_ratio_text(value)} ({_ms(p)} vs {_ms(c)}; "
                f"per repetition {_spread(reps)})"
            )
        targets.append(
            Target(
                name=f"{rpc} p50, worst C: pycri / containerd-CRI",
                measured=worst,
                bound=1.0,
                at_most=True,
                detail="; ".join(parts) or NO_VALUE,
            )
        )
    p = _get(summary, PYCRI, "pull", "seconds", "p50")
    c = _get(summary, CONTAINERD, "pull", "seconds", "p50")
    if not (math.isnan(p) and math.isnan(c)):
        reps = _paired_ratios(
            summary.get(PYCRI, {}).get("pull", {}).get("p50_per_rep", []),
            summary.get(CONTAINERD, {}).get("pull", {}).get("p50_per_rep", []),
        )
        targets.append(
            Target(
                name="PullImage p50 (one big layer + small ones): pycri / containerd-CRI",
                measured=ratio(p, c),
                bound=0.8,
                at_most=True,
                detail=f"{_ms(p)} vs {_ms(c)}; per repetition: {_spread(reps)}",
            )
        )
    p = _get(summary, PYCRI, "fsinfo", "paced", "p50")
    c = _get(summary, CONTAINERD, "fsinfo", "paced", "p50")
    targets.append(
        Target(
            name="ImageFsInfo p50, kubelet-paced: pycri / containerd-CRI",
            measured=ratio(p, c),
            bound=1.0,
            at_most=True,
            detail=f"{_ms(p)} vs {_ms(c)}",
        )
    )
    pods = summary.get(PYCRI, {}).get("rss", {}).get("pods", "?")
    for key, label, bound in (
        ("idle_mib", "RSS idle", 1.3),
        ("loaded_mib", f"RSS with {pods} running pods", 1.0),
    ):
        p = _get(summary, PYCRI, "rss", key)
        c = _get(summary, CONTAINERD, "rss", key)
        targets.append(
            Target(
                name=f"{label}: (pycri + its containerd) / containerd-CRI",
                measured=ratio(p, c),
                bound=bound,
                at_most=True,
                detail=f"{p:.1f} vs {c:.1f} MiB",
            )
        )
    return targets


# --- Markdown ----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return NO_VALUE
    if math.isinf(seconds):
        return "never"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _format(value: float, unit: str) -> str:
    if math.isnan(value):
        return NO_VALUE
    if unit == "ms":
        return _ms(value)
    if unit == "mib":
        return f"{value:.1f} MiB"
    return f"{value:.2f}"


def _ratio_text(value: float) -> str:
    return NO_VALUE if math.isnan(value) else f"{value:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def comparison_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of the main table: measure, pycri, containerd-CRI, ratio."""
    rows: list[list[str]] = []

    def add(label: str, path: Sequence[str], fmt: str) -> None:
        p = _get(summary, PYCRI, *path)
        c = _get(summary, CONTAINERD, *path)
        if math.isnan(p) and math.isnan(c):
            return
        rows.append([label, _format(p, fmt), _format(c, fmt), _ratio_text(ratio(p, c))])

    for concurrency in sorted(summary.get(PYCRI, {}).get("lifecycle", {}), key=int):
        add(
            f"lifecycle pods/s, C={concurrency}",
            ("lifecycle", concurrency, "pods_per_second"),
            "rate",
        )
    for n in sorted(summary.get(PYCRI, {}).get("exit-latency", {}), key=int):
        for q in ("p50", "p99", "max"):
            add(f"exit-latency N={n} {q}", ("exit-latency", n, "latency", q), "ms")
    for n in sorted(summary.get(PYCRI, {}).get("hol", {}), key=int):
        for q in ("p50", "p99", "max"):
            add(f"hol N={n}+1 {q} (containerd: fault label inert)", ("hol", n, "latency", q), "ms")
    hol_rows = summary.get(PYCRI, {}).get("hol", {})
    for n, entry in sorted(hol_rows.items()):
        delayed = [d for d in entry.get("delayed_latencies", []) if d is not None]
        other = summary.get(CONTAINERD, {}).get("hol", {}).get(n, {}).get("delayed_latencies", [])
        other = [d for d in other if d is not None]
        p = max(delayed) if delayed else math.nan
        c = max(other) if other else math.nan
        rows.append(
            [
                f"hol N={n}+1: the delay-labelled container (worst)",
                _ms(p),
                _ms(c),
                _ratio_text(ratio(p, c)),
            ]
        )
    pull = summary.get(PYCRI, {}).get("pull") or summary.get(CONTAINERD, {}).get("pull")
    if pull:
        what = f"{pull['mib']:.0f} MiB of layers"
        add(f"PullImage p50 ({what})", ("pull", "seconds", "p50"), "ms")
        add(f"PullImage max ({what})", ("pull", "seconds", "max"), "ms")
        add(
            "… CPU of the daemon processes per pull, p50 (s)",
            ("pull", "cpu_seconds", "p50"),
            "rate",
        )
        parts = summary.get(PYCRI, {}).get("pull", {}).get("cpu_parts_p50", {})
        if parts:
            split = " + ".join(f"{name} {seconds:.2f}" for name, seconds in parts.items())
            rows.append(["… of which (pycri's processes, s)", split, NO_VALUE, NO_VALUE])
        ctr = _get(summary, CONTAINERD, "ctr-pull", "seconds", "p50")
        if not math.isnan(ctr):
            p = _get(summary, PYCRI, "pull", "seconds", "p50")
            rows.append(
                [
                    "`ctr images pull` p50 (containerd-CRI's containerd; ratio: pycri's PullImage)",
                    NO_VALUE,
                    _ms(ctr),
                    _ratio_text(ratio(p, ctr)),
                ]
            )
    pods = summary.get(PYCRI, {}).get("rss", {}).get("pods", "?")
    add("RSS idle (daemon processes)", ("rss", "idle_mib"), "mib")
    add(f"RSS with {pods} running pods", ("rss", "loaded_mib"), "mib")
    add("RSS after their removal", ("rss", "after_mib"), "mib")
    parts = summary.get(PYCRI, {}).get("rss", {}).get("loaded_parts_mib", {})
    if parts:
        split = " + ".join(f"{name} {mib:.1f}" for name, mib in parts.items())
        rows.append(["… of which (pycri's processes, MiB)", split, NO_VALUE, NO_VALUE])
    add(f"PSS with {pods} running pods (shared pages split)", ("rss", "loaded_pss_mib"), "mib")
    add(f"shims' RSS with {pods} pods (not counted above)", ("rss", "loaded_shim_mib"), "mib")
    pace = summary.get(PYCRI, {}).get("fsinfo", {}).get("pace_seconds", "?")
    add("ImageFsInfo p50, back to back", ("fsinfo", "burst", "p50"), "ms")
    add(f"ImageFsInfo p50, {pace} s apart (as kubelet calls it)", ("fsinfo", "paced", "p50"), "ms")
    return rows


def render_markdown(
    doc: dict[str, Any],
    *,
    summary: dict[str, Any],
    targets: Sequence[Target],
    plots: Sequence[Path],
    profile: dict[str, Any] | None,
) -> str:
    machine = doc.get("machine", {})
    pycri_info = doc.get("pycri", {})
    plan = doc.get("plan", {})
    lines = [
        f"# pycri vs containerd's CRI plugin — {doc.get('date', '?')}",
        "",
        f"Machine: {machine.get('cpus', '?')} CPUs, {machine.get('memory_gib', '?')} GiB, "
        f"kernel {machine.get('kernel', '?')}, cgroups {machine.get('cgroups', '?')}; "
        f"{machine.get('containerd', '?')}; runc {machine.get('runc', '?')}; "
        f"Python {machine.get('python', '?')}.",
        f"pycri: commit {pycri_info.get('commit', '?')}"
        + (" (with uncommitted changes)" if pycri_info.get("dirty") else "")
        + f", source {pycri_info.get('source', '?')}.",
        f"Plan: {plan.get('repetitions', '?')} repetitions, runtimes alternating scenario by "
        f"scenario; lifecycle {plan.get('lifecycle', '?')} (pods, concurrency); exit-latency "
        f"N = {plan.get('exit_sizes', '?')} (N=1 x {plan.get('single_exit_trials', '?')} "
        f"trials per repetition); hol N = {plan.get('hol_containers', '?')} + 1 with a "
        f"{plan.get('hol_delay_seconds', '?')} s delayed delete; rss with "
        f"{plan.get('rss_pods', '?')} pods. Whole run: {doc.get('duration_seconds', 0):.0f} s.",
        _quiet_text(doc),
        "",
        "Exit latency: from the release of the FIFO until ListContainers (polled back to back, "
        "filtered to the pod's EXITED containers) shows the container EXITED; each one's exit "
        "code and finished_at are checked with ContainerStatus after the window. Memory: "
        "VmRSS of the daemon processes (pycri: the pycri process + its managed containerd; "
        "containerd-CRI: the containerd process); shims are listed apart.",
        "",
        "## Side by side",
        "",
        *_table(
            ["measure", "pycri", "containerd-CRI", "pycri / containerd-CRI"],
            comparison_rows(summary),
        ),
        "",
        "## Targets (issue 17)",
        "",
        *_table(
            ["target", "measured", "bound", "", "values"],
            [
                [
                    t.name,
                    _ratio_text(t.measured),
                    ("≤ " if t.at_most else "≥ ") + f"{t.bound:g}",
                    "met" if t.met else "**missed**",
                    t.detail,
                ]
                for t in targets
            ],
        ),
        "",
        "## Correctness",
        "",
        "Every check of every run, summed (wrong exit code or state, missing EXITED reports, "
        "failed RPCs, pods or containers left behind).",
        "",
        *_table(
            ["runtime", "scenario", "checked", "wrong", "missing", "failed RPCs", "leaked"],
            _correctness_rows(summary),
        ),
        "",
        "## Per repetition",
        "",
        "Exits of one burst are correlated (they share the machine's load at that moment), so "
        "a pooled p99 is decided by the slowest burst. Each burst on its own, p50 / p99 (ms), "
        "and lifecycle pods/s per repetition:",
        "",
        *_table(["runtime", "scenario", "per repetition"], _per_rep_rows(summary)),
        "",
        "## Lifecycle: latency per RPC (p50 / p95 / max)",
        "",
        *_table(
            [
                "RPC",
                *[f"{RUNTIME_TITLES[r]} C={c}" for c in _concurrencies(summary) for r in RUNTIMES],
            ],
            _rpc_rows(summary),
        ),
        "",
    ]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines.append("")
    if profile:
        lines += render_profile(profile)
    return "\n".join(lines)


def _quiet_text(doc: dict[str, Any]) -> str:
    """How quiet the machine was: the idle waits before the runs, and the load average."""
    waits = doc.get("settle_seconds", [])
    capped = sum(1 for w in waits if w >= SETTLE_CAP_SECONDS)
    load = doc.get("load_average", {})
    return (
        f"Before each measured run the runner waited for idle CPUs: {len(waits)} waits, "
        f"{capped} gave up after {SETTLE_CAP_SECONDS:.0f} s (the machine stayed busy). "
        f"Load average (1/5/15 min) at the start {load.get('start', '?')}, "
        f"at the end {load.get('end', '?')}."
    )


def _concurrencies(summary: dict[str, Any]) -> list[str]:
    return sorted(summary.get(PYCRI, {}).get("lifecycle", {}), key=int)


def _rpc_rows(summary: dict[str, Any]) -> list[list[str]]:
    names: list[str] = []
    for runtime in RUNTIMES:
        for entry in summary.get(runtime, {}).get("lifecycle", {}).values():
            names += [n for n in entry["rpc"] if n not in names]
    rows = []
    for name in names:
        row = [name]
        for concurrency in _concurrencies(summary):
            for runtime in RUNTIMES:
                entry = summary.get(runtime, {}).get("lifecycle", {}).get(concurrency, {})
                s = entry.get("rpc", {}).get(name)
                row.append(
                    NO_VALUE if not s else f"{_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['max'])}"
                )
        rows.append(row)
    return rows


def _per_rep_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for runtime in RUNTIMES:
        scenarios = summary.get(runtime, {})
        for c, e in sorted(scenarios.get("lifecycle", {}).items(), key=lambda kv: int(kv[0])):
            values = ", ".join(f"{v:.2f}" for v in e["pods_per_second_per_rep"])
            rows.append([RUNTIME_TITLES[runtime], f"lifecycle C={c} pods/s", values])
        for scenario in ("exit-latency", "hol"):
            for n, e in sorted(scenarios.get(scenario, {}).items(), key=lambda kv: int(kv[0])):
                if int(n) == 1:
                    continue  # single containers: the pooled trials are the distribution
                values = ", ".join(
                    f"{r['p50'] * 1000:.0f} / {r['p99'] * 1000:.0f}" for r in e.get("per_run", [])
                )
                label = f"{scenario} N={n}" + ("+1" if scenario == "hol" else "")
                rows.append([RUNTIME_TITLES[runtime], label, values])
        for scenario in PULL_SCENARIOS:
            if scenarios.get(scenario):
                values = ", ".join(_ms(v) for v in scenarios[scenario]["p50_per_rep"])
                rows.append([RUNTIME_TITLES[runtime], f"{scenario} p50", values])
    return rows


def _correctness_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for runtime in RUNTIMES:
        scenarios = summary.get(runtime, {})
        entries: list[tuple[str, dict[str, Any]]] = []
        for c, e in scenarios.get("lifecycle", {}).items():
            entries.append((f"lifecycle C={c}", e["correctness"]))
        for n, e in scenarios.get("exit-latency", {}).items():
            entries.append((f"exit-latency N={n}", e["correctness"]))
        for n, e in scenarios.get("hol", {}).items():
            entries.append((f"hol N={n}+1", e["correctness"]))
        if scenarios.get("rss"):
            entries.append(("rss", scenarios["rss"]["correctness"]))
        if scenarios.get("fsinfo"):
            entries.append(("fsinfo", scenarios["fsinfo"]["correctness"]))
        for scenario in PULL_SCENARIOS:
            if scenarios.get(scenario):
                entries.append((scenario, scenarios[scenario]["correctness"]))
        for label, c in entries:
            rows.append(
                [
                    RUNTIME_TITLES[runtime],
                    label,
                    *(
                        str(c.get(k, 0))
                        for k in ("checked", "wrong", "missing", "failed_rpcs", "leaked")
                    ),
                ]
            )
    return rows


def render_profile(profile: dict[str, Any]) -> list[str]:
    lines = [
        "## Where pycri spends its CPU (py-spy)",
        "",
        "Sampled in a separate pass after the measured runs (sampling slows the target). "
        "Self = samples with that frame on top of the stack; inclusive = samples with that "
        "pycri function anywhere on the stack.",
        "",
    ]
    for load, entry in profile.items():
        summary = entry.get("summary", {})
        total = max(int(summary.get("total_samples", 0)), 1)
        lines += [
            f"### {load}: {summary.get('total_samples', 0)} busy samples "
            f"({summary.get('idle_samples', 0)} idle left out)",
            "",
        ]
        lines += _table(
            ["self", "frame"],
            [[f"{100 * n / total:.1f}%", f"`{w}`"] for w, n in summary.get("top_self", [])[:10]],
        )
        lines.append("")
        lines += _table(
            ["inclusive", "pycri function"],
            [
                [f"{100 * n / total:.1f}%", f"`{w}`"]
                for w, n in summary.get("top_inclusive_pycri", [])[:12]
            ],
        )
        lines.append("")
    return lines


def update_docs_section(text: str, *, section: str) -> str:
    """Replace what lies between the results markers of ``docs/benchmarks.md``."""
    if RESULTS_START not in text or RESULTS_END not in text:
        return text.rstrip("\n") + f"\n\n{RESULTS_START}\n{section}\n{RESULTS_END}\n"
    head, _, rest = text.partition(RESULTS_START)
    _, _, tail = rest.partition(RESULTS_END)
    return f"{head}{RESULTS_START}\n{section}\n{RESULTS_END}{tail}"


# --- plots -------------------------------------------------------------------------------


def make_plots(summary: dict[str, Any], *, out_dir: Path, stem: str) -> list[Path]:
    """PNG plots next to the report; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {PYCRI: "tab:blue", CONTAINERD: "tab:orange"}
    paths = []

    # exit latency vs N
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for runtime in RUNTIMES:
        entries = summary.get(runtime, {}).get("exit-latency", {})
        ns = sorted(entries, key=int)
        if not ns:
            continue
        for q, style in (("p50", "--"), ("p99", "-")):
            ax.plot(
                [int(n) for n in ns],
                [entries[n]["latency"][q] * 1000 for n in ns],
                style,
                marker="o",
                color=colors[runtime],
                label=f"{RUNTIME_TITLES[runtime]} {q}",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("containers exiting at one instant (N)")
    ax.set_ylabel("release → EXITED reported (ms)")
    ax.set_title("Exit latency vs N")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out_dir / f"{stem}-exit-latency-vs-n.png"))

    # latency distributions (CDF) at the largest N, with hol
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for runtime in RUNTIMES:
        for scenario, style in (("exit-latency", "-"), ("hol", ":")):
            entries = summary.get(runtime, {}).get(scenario, {})
            if not entries:
                continue
            n = max(entries, key=int)
            samples = entries[n]["latencies"]
            if not samples:
                continue
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            label = f"{RUNTIME_TITLES[runtime]} N={n}" + (
                " + delayed delete" if scenario == "hol" else ""
            )
            ax.step(
                [s * 1000 for s in samples],
                ys,
                style,
                where="post",
                color=colors[runtime],
                label=label,
            )
    ax.set_xscale("log")
    ax.set_xlabel("release → EXITED reported (ms)")
    ax.set_ylabel("fraction of containers")
    ax.set_title("Exit latency distribution")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out_dir / f"{stem}-exit-latency-cdf.png"))

    # lifecycle per-RPC p50 with p95 whiskers
    concurrencies = _concurrencies(summary)
    if concurrencies:
        fig, axes = plt.subplots(
            1, len(concurrencies), figsize=(6.0 * len(concurrencies), 4.2), squeeze=False
        )
        for ax, concurrency in zip(axes[0], concurrencies, strict=True):
            names = list(summary[PYCRI]["lifecycle"][concurrency]["rpc"])
            width = 0.38
            for offset, runtime in enumerate(RUNTIMES):
                rpc = (
                    summary.get(runtime, {})
                    .get("lifecycle", {})
                    .get(concurrency, {})
                    .get("rpc", {})
                )
                p50 = [rpc.get(n, {}).get("p50", math.nan) * 1000 for n in names]
                p95 = [rpc.get(n, {}).get("p95", math.nan) * 1000 for n in names]
                xs = [i + (offset - 0.5) * width for i in range(len(names))]
                ax.bar(
                    xs, p50, width, color=colors[runtime], label=f"{RUNTIME_TITLES[runtime]} p50"
                )
                ax.errorbar(
                    xs, p95, fmt="_", color="black", markersize=10, label="p95" if offset else None
                )
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(
                [n.replace("Container", "Ctr").replace("PodSandbox", "Pod") for n in names],
                rotation=30,
                ha="right",
            )
            ax.set_ylabel("latency (ms)")
            ax.set_title(f"Lifecycle RPC latency, C={concurrency}")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize="small")
        paths.append(_save(fig, out_dir / f"{stem}-lifecycle-rpc.png"))

    # memory
    if all(summary.get(r, {}).get("rss") for r in RUNTIMES):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        phases = (
            ("idle_mib", "idle"),
            ("loaded_mib", "pods running"),
            ("after_mib", "after removal"),
        )
        width = 0.38
        for offset, runtime in enumerate(RUNTIMES):
            values = [summary[runtime]["rss"][key] for key, _ in phases]
            xs = [i + (offset - 0.5) * width for i in range(len(phases))]
            ax.bar(xs, values, width, color=colors[runtime], label=RUNTIME_TITLES[runtime])
        ax.set_xticks(range(len(phases)))
        ax.set_xticklabels([label for _, label in phases])
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"Daemon memory ({summary[PYCRI]['rss']['pods']} pods)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
        paths.append(_save(fig, out_dir / f"{stem}-rss.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
