"""The runner: pycri and containerd's CRI plugin side by side, every scenario, one report.

    .venv/bin/python -m bench.run                   # full comparison (~17 min on 2 cores)
    .venv/bin/python -m bench.run --quick           # tiny sizes, a smoke test (results in /tmp)
    .venv/bin/python -m bench.run --pycri-commit HEAD   # measure a commit, not the work tree
    .venv/bin/python -m bench.run --render bench/results/<date>.json   # the report again
    .venv/bin/python -m bench.run --only pull       # one scenario (here: image pulls)

What it does, in order:
1. builds the busybox and pause images (``pycri.testing.images``) once;
2. starts pycri (``pycri serve --enable-fault-injection``, managed containerd) and a separate
   containerd with its CRI plugin, each under its own temp dir, and loads both images into
   each (``pycri.images.importer``, namespace ``k8s.io``);
3. ``rss`` on both while they are fresh (idle, with 100 running pods, after removal), then
   ``fsinfo`` (ImageFsInfo back to back and kubelet-paced, ``bench.fsinfo``);
4. each repetition runs lifecycle (C=1, 4, 8), exit-latency (N=1, 32, 128) and hol on both,
   switching runtime scenario by scenario and swapping which goes first every repetition,
   so slow drifts of the machine hit both alike; then, per repetition, the ``pull``
   scenario (``bench.pull``: a 256 MiB image from a local registry, ``--only pull`` alone);
5. profiles pycri with py-spy under the lifecycle and exit loads (a separate pass);
6. stops both, kills their shims, unmounts and removes the temp dirs (also on failure);
7. writes ``bench/results/<date>.json`` (every raw sample), ``<date>.md`` (tables, targets,
   correctness, profile) and ``<date>-*.png``, and refreshes the results section of
   ``docs/benchmarks.md``.

Needs root, Debian's containerd and runc, and nothing else running on the machine worth
measuring against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import pull as pull_scenario
from bench import report
from bench.cri import CriClient
from bench.daemons import (
    CONTAINERD_BINARY,
    ContainerdCri,
    ImageTarballs,
    Pycri,
    Runtime,
    build_images,
    load_images,
    short_temp_dir,
    wait_for_quiet_machine,
)
from bench.fsinfo import run_image_fs_info
from bench.profiling import PySpyRecording, summarize_collapsed
from bench.scenarios import (
    FAULT_DELETE_DELAY_LABEL,
    remove_everything,
    run_exit_latency,
    run_lifecycle,
    run_rss,
)

REPO = Path(__file__).resolve().parents[1]
SOURCE_ENV = "PYCRI_BENCH_SOURCE"
COMMIT_ENV = "PYCRI_BENCH_COMMIT"
LIFECYCLE_SAMPLE_RATE = 200
EXIT_BURST_SAMPLE_RATE = 1000  # a burst is handled in a fraction of a second
EXIT_BURSTS_PROFILED = 2


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Sizes of one comparison (the defaults: the report's run)."""

    repetitions: int = 3
    lifecycle: tuple[tuple[int, int], ...] = ((30, 1), (60, 4), (80, 8))  # (pods, concurrency)
    exit_sizes: tuple[int, ...] = (1, 32, 128)
    single_exit_trials: int = 10  # N=1 is repeated per repetition for a distribution
    hol_containers: int = 128
    hol_delay_seconds: int = 30
    rss_pods: int = 100
    rss_concurrency: int = 4
    profile_lifecycle: tuple[int, int] = (60, 4)
    profile_exit_containers: int = 128


QUICK_PLAN = Plan(
    repetitions=1,
    lifecycle=((4, 1), (8, 4)),
    exit_sizes=(1, 8),
    single_exit_trials=2,
    hol_containers=8,
    rss_pods=5,
    profile_lifecycle=(8, 4),
    profile_exit_containers=8,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _memory(runtime: Runtime) -> dict[str, Any]:
    return dataclasses.asdict(await asyncio.to_thread(runtime.memory))


class Session:
    """The two runtimes, their clients, and every run's record."""

    def __init__(self, *, runtimes: list[Runtime], work_dir: Path) -> None:
        self.runtimes = runtimes
        self.clients = {r.name: CriClient(socket=r.cri_socket) for r in runtimes}
        self.work_dir = work_dir
        self.runs: list[dict[str, Any]] = []
        self.settle_seconds: list[float] = []
        self._labels = 0

    async def settle(self) -> None:
        self.settle_seconds.append(await wait_for_quiet_machine())

    def label(self, runtime: Runtime, scenario: str) -> str:
        self._labels += 1
        return f"{scenario}-{runtime.name}-{self._labels}"

    def record(
        self, *, rep: int, runtime: Runtime, scenario: str, params: dict[str, Any], result: Any
    ) -> None:
        self.runs.append(
            {
                "rep": rep,
                "runtime": runtime.name,
                "scenario": scenario,
                "params": params,
                "result": result.to_json(),
            }
        )
        problems = result.correctness
        flag = "" if problems.ok else f"  PROBLEMS: {problems.to_json()}"
        log(f"  {runtime.name:15} {scenario} {params}{flag}")

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


async def _run_scenarios_once(session: Session, *, plan: Plan, rep: int) -> None:
    order = session.runtimes if rep % 2 == 0 else list(reversed(session.runtimes))
    steps: list[tuple[str, dict[str, Any]]] = [
        ("lifecycle", {"pods": pods, "concurrency": c}) for pods, c in plan.lifecycle
    ]
    steps += [("exit-latency", {"containers": n}) for n in plan.exit_sizes]
    steps.append(
        ("hol", {"containers": plan.hol_containers, "delay_seconds": plan.hol_delay_seconds})
    )
    for scenario, params in steps:
        for runtime in order:
            client = session.clients[runtime.name]
            await session.settle()
            if scenario == "lifecycle":
                result: Any = await run_lifecycle(
                    client=client,
                    pods=params["pods"],
                    concurrency=params["concurrency"],
                    run_label=session.label(runtime, scenario),
                    work_dir=session.work_dir,
                )
                session.record(
                    rep=rep, runtime=runtime, scenario=scenario, params=params, result=result
                )
            elif scenario == "exit-latency":
                trials = plan.single_exit_trials if params["containers"] == 1 else 1
                for trial in range(trials):
                    if trial:
                        await session.settle()
                    result = await run_exit_latency(
                        client=client,
                        containers=params["containers"],
                        run_label=session.label(runtime, scenario),
                        work_dir=session.work_dir,
                    )
                    session.record(
                        rep=rep,
                        runtime=runtime,
                        scenario=scenario,
                        params={**params, "trial": trial},
                        result=result,
                    )
            else:
                result = await run_exit_latency(
                    client=client,
                    containers=params["containers"],
                    run_label=session.label(runtime, scenario),
                    work_dir=session.work_dir,
                    delayed_labels={FAULT_DELETE_DELAY_LABEL: str(params["delay_seconds"])},
                )
                session.record(
                    rep=rep, runtime=runtime, scenario=scenario, params=params, result=result
                )


async def _run_rss(session: Session, *, plan: Plan) -> None:
    for runtime in session.runtimes:
        await session.settle()
        result = await run_rss(
            client=session.clients[runtime.name],
            pods=plan.rss_pods,
            concurrency=plan.rss_concurrency,
            run_label=session.label(runtime, "rss"),
            work_dir=session.work_dir,
            sample_memory=lambda r=runtime: _memory(r),  # type: ignore[misc]
        )
        session.record(
            rep=0, runtime=runtime, scenario="rss", params={"pods": plan.rss_pods}, result=result
        )


async def _run_fsinfo(session: Session) -> None:
    """ImageFsInfo on both, images loaded (``bench.fsinfo``: back to back, then paced)."""
    await session.settle()
    results = await run_image_fs_info(clients=session.clients)
    for runtime in session.runtimes:
        result = results[runtime.name]
        session.record(rep=0, runtime=runtime, scenario="fsinfo", params={}, result=result)


async def _profile_pycri(
    session: Session, *, pycri: Pycri, plan: Plan, out_dir: Path, stem: str
) -> dict[str, Any]:
    """py-spy record of pycri under a lifecycle load and across bursts of exits."""
    assert pycri.proc is not None
    pid = pycri.proc.pid
    client = session.clients[pycri.name]
    profiles: dict[str, Any] = {}

    async def keep(name: str, slug: str, texts: list[str]) -> None:
        text = "\n".join(t.rstrip("\n") for t in texts if t) + "\n"
        kept = out_dir / f"{stem}-profile-{slug}.txt"
        await asyncio.to_thread(kept.write_text, text)
        summary = summarize_collapsed(text)
        profiles[name] = {"summary": summary.to_json(), "collapsed_stacks": kept.name}
        log(f"  profiled {name}: {summary.total_samples} busy samples")

    pods, concurrency = plan.profile_lifecycle
    await session.settle()
    recording = PySpyRecording(
        pid=pid, output=session.work_dir / "profile-lifecycle.txt", rate=LIFECYCLE_SAMPLE_RATE
    )
    recording.start()
    await asyncio.sleep(1.0)  # py-spy attaches
    await run_lifecycle(
        client=client,
        pods=pods,
        concurrency=concurrency,
        run_label=session.label(pycri, "profile-lifecycle"),
        work_dir=session.work_dir,
    )
    lifecycle_text = await asyncio.to_thread(recording.stop)
    await keep(f"lifecycle, {pods} pods at C={concurrency}", "lifecycle", [lifecycle_text])

    burst_texts: list[str] = []
    for burst in range(EXIT_BURSTS_PROFILED):
        await session.settle()
        burst_recording = PySpyRecording(
            pid=pid,
            output=session.work_dir / f"profile-exit-{burst}.txt",
            rate=EXIT_BURST_SAMPLE_RATE,
        )

        async def before_release(r: PySpyRecording = burst_recording) -> None:
            r.start()
            await asyncio.sleep(1.0)

        async def after_exits(r: PySpyRecording = burst_recording) -> None:
            await asyncio.sleep(1.0)  # the task deletes that follow the recorded exits
            burst_texts.append(await asyncio.to_thread(r.stop))

        await run_exit_latency(
            client=client,
            containers=plan.profile_exit_containers,
            run_label=session.label(pycri, "profile-exit"),
            work_dir=session.work_dir,
            before_release=before_release,
            after_exits=after_exits,
        )
    await keep(
        f"exit bursts: {EXIT_BURSTS_PROFILED} x {plan.profile_exit_containers} containers "
        "released at once (release → all EXITED + 1 s)",
        "exit-burst",
        burst_texts,
    )
    return profiles


def _command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else "?"
    )


def machine_info() -> dict[str, Any]:
    memory_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    cgroups = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "cgroups": cgroups,
        "containerd": _command_output([CONTAINERD_BINARY, "--version"]),
        "runc": _command_output(["runc", "--version"]).removeprefix("runc version "),
        "python": platform.python_version(),
    }


def pycri_info() -> dict[str, Any]:
    import pycri

    source = Path(pycri.__file__).resolve().parents[1]
    commit = os.environ.get(COMMIT_ENV) or _command_output(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"]
    )
    dirty = False
    if not os.environ.get(COMMIT_ENV):
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=False,
        )
        dirty = bool(status.stdout.strip())
    return {
        "version": pycri.__version__,
        "commit": commit[:12],
        "dirty": dirty,
        "source": str(source),
    }


def _rounded(value: Any) -> Any:
    """Floats to microseconds (or 6 digits) so the JSON stays readable and small."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


async def compare(
    *,
    plan: Plan,
    out_dir: Path,
    docs_path: Path | None,
    profile: bool,
    stem: str,
    only: str = "",
    pull_plan: pull_scenario.PullPlan | None = None,
) -> Path:
    """Run the whole comparison; return the path of the Markdown report."""
    started = time.monotonic()
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    work_dir = short_temp_dir(prefix="bench-")
    images_dir = work_dir / "images"
    images_dir.mkdir()
    pycri = Pycri(base=short_temp_dir(prefix="bench-p-"))
    containerd = ContainerdCri(base=short_temp_dir(prefix="bench-c-"))
    runtimes: list[Runtime] = [pycri, containerd]
    session: Session | None = None
    profiles: dict[str, Any] = {}
    try:
        log("building images; starting pycri and containerd-CRI")
        tarballs: ImageTarballs = await asyncio.to_thread(build_images, directory=images_dir)
        for runtime in runtimes:
            runtime.start()
        for runtime in runtimes:
            await runtime.wait_ready()
            await load_images(runtime=runtime, tarballs=tarballs)
        session = Session(runtimes=runtimes, work_dir=work_dir)
        if not only:
            log(f"rss: {plan.rss_pods} pods on each")
            await _run_rss(session, plan=plan)
            log("ImageFsInfo: back to back, then paced, on both")
            await _run_fsinfo(session)
            for rep in range(plan.repetitions):
                log(f"repetition {rep + 1} of {plan.repetitions}")
                await _run_scenarios_once(session, plan=plan, rep=rep)
        if only in ("", "pull"):
            pulls = pull_plan or pull_scenario.PullPlan()
            async with pull_scenario.serve_image(work_dir=work_dir, plan=pulls) as fixture:
                fixture.configure(containerd)
                for rep in range(plan.repetitions):
                    log(f"pull: repetition {rep + 1} of {plan.repetitions}")
                    await pull_scenario.run(session, fixture=fixture, plan=pulls, rep=rep, log=log)
        final_memory = {r.name: await _memory(r) for r in runtimes}
        if profile and not only:
            log("profiling pycri with py-spy")
            profiles = await _profile_pycri(
                session, pycri=pycri, plan=plan, out_dir=out_dir, stem=stem
            )
    finally:
        if session is not None:
            for runtime in runtimes:  # normally nothing is left; after a failure, maybe
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(120):
                        await remove_everything(client=session.clients[runtime.name])
            await session.close()
        log("stopping both runtimes and cleaning up")
        for runtime in runtimes:
            await asyncio.to_thread(runtime.stop)
        shutil.rmtree(work_dir, ignore_errors=True)
    doc: dict[str, Any] = {
        "date": stem,
        "machine": machine_info(),
        "pycri": pycri_info(),
        "plan": dataclasses.asdict(plan),
        "duration_seconds": time.monotonic() - started,
        "memory_after_all_scenarios": final_memory,
        "settle_seconds": session.settle_seconds,
        "load_average": {
            "start": load_at_start,
            "end": [round(v, 2) for v in os.getloadavg()],
        },
        "runs": session.runs,
    }
    doc["profile"] = profiles
    return await asyncio.to_thread(
        write_report, doc=doc, out_dir=out_dir, docs_path=docs_path, stem=stem
    )


def write_report(*, doc: dict[str, Any], out_dir: Path, docs_path: Path | None, stem: str) -> Path:
    """Summary, targets, JSON, plots, Markdown and the docs section from one results doc."""
    summary = report.summarize_runs(doc["runs"])
    hol_size = int(doc.get("plan", {}).get("hol_containers", 128))
    targets = report.evaluate_targets(summary, hol_size=hol_size)
    doc["summary"] = summary
    doc["targets"] = [t.to_json() for t in targets]
    profiles = doc.get("profile", {})
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(_rounded(doc), indent=1) + "\n")
    plots = report.make_plots(summary, out_dir=out_dir, stem=stem)
    markdown = report.render_markdown(
        doc, summary=summary, targets=targets, plots=plots, profile=profiles
    )
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(markdown)
    if docs_path is not None:
        _update_docs(
            docs_path=docs_path,
            md_path=md_path,
            json_path=json_path,
            summary=summary,
            targets=targets,
            plots=plots,
        )
    log(f"wrote {md_path}, {json_path} and {len(plots)} plots")
    for target in targets:
        verdict = "met   " if target.met else "MISSED"
        log(f"  {verdict} {target.name}: {target.measured:.2f} ({target.detail})")
    return md_path


def _update_docs(
    *,
    docs_path: Path,
    md_path: Path,
    json_path: Path,
    summary: dict[str, Any],
    targets: list[report.Target],
    plots: list[Path],
) -> None:
    rel = os.path.relpath(md_path.parent, docs_path.parent)
    lines = [
        f"Latest run: [{md_path.name}]({rel}/{md_path.name}) (raw samples: "
        f"[{json_path.name}]({rel}/{json_path.name})).",
        "",
        *report._table(
            ["measure", "pycri", "containerd-CRI", "pycri / containerd-CRI"],
            report.comparison_rows(summary),
        ),
        "",
        *report._table(
            ["target", "measured", "bound", ""],
            [
                [
                    t.name,
                    report._ratio_text(t.measured),
                    ("≤ " if t.at_most else "≥ ") + f"{t.bound:g}",
                    "met" if t.met else "**missed**",
                ]
                for t in targets
            ],
        ),
        "",
        *[f"![{p.stem}]({rel}/{p.name})" for p in plots],
    ]
    text = docs_path.read_text() if docs_path.exists() else "# Benchmarks\n"
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(report.update_docs_section(text, section="\n".join(lines)))


def _reexec_with_commit(commit: str, argv: list[str]) -> None:
    """Export ``commit``'s ``src`` to a temp dir and run again with it first on the path."""
    full = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = short_temp_dir(prefix="bench-src-")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", full, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{dest}/src:{REPO}",
        SOURCE_ENV: str(dest),
        COMMIT_ENV: full,
    }
    os.execve(sys.executable, [sys.executable, "-m", "bench.run", *argv], env)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the tool works")
    p.add_argument("--repetitions", type=int, help="repetitions of every scenario (3)")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy pass")
    p.add_argument(
        "--output-dir",
        type=Path,
        help="where results go (bench/results; with --quick a new temp dir)",
    )
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    p.add_argument("--name", help="file stem of the results (default: today's date, UTC)")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only write the report (Markdown, plots, docs) again from a results JSON",
    )
    p.add_argument("--only", choices=["pull"], default="", help="run only this scenario")
    p.add_argument("--pull-trials", type=int, help="pulls per runtime and repetition (3)")
    p.add_argument(
        "--pycri-commit",
        help="measure pycri as of this git commit (exported to a temp dir), not the work tree",
    )
    return p


def _pull_plan(args: argparse.Namespace) -> pull_scenario.PullPlan:
    plan = pull_scenario.QUICK_PULL_PLAN if args.quick else pull_scenario.PullPlan()
    if args.pull_trials:
        plan = dataclasses.replace(plan, trials=args.pull_trials)
    return plan


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(args_list)
    if args.render:
        doc = json.loads(args.render.read_text())
        write_report(
            doc=doc,
            out_dir=args.render.parent,
            docs_path=None if args.no_docs else args.docs,
            stem=args.render.stem,
        )
        return 0
    if os.geteuid() != 0:
        print("bench.run: needs root (containers, mounts, cgroups)", file=sys.stderr)
        return 2
    if args.pycri_commit and SOURCE_ENV not in os.environ:
        _reexec_with_commit(args.pycri_commit, args_list)
    plan = QUICK_PLAN if args.quick else Plan()
    if args.repetitions:
        plan = dataclasses.replace(plan, repetitions=args.repetitions)
    stem = args.name or datetime.now(UTC).strftime("%Y-%m-%d") + ("-quick" if args.quick else "")
    out_dir = args.output_dir or (
        short_temp_dir(prefix="bench-quick-") if args.quick else REPO / "bench" / "results"
    )
    try:
        md_path = asyncio.run(
            compare(
                plan=plan,
                out_dir=out_dir,
                docs_path=None if args.no_docs or args.quick else args.docs,
                profile=not args.no_profile,
                stem=stem,
                only=args.only,
                pull_plan=_pull_plan(args),
            )
        )
    finally:
        exported = os.environ.get(SOURCE_ENV, "")
        if exported.startswith("/tmp/bench-src-"):
            shutil.rmtree(exported, ignore_errors=True)
    print(md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
