"""A short side-by-side run of the memory and ImageFsInfo rows only (a few minutes, not 7).

    .venv/bin/python -m bench.focused                      # rss with 100 pods + ImageFsInfo
    .venv/bin/python -m bench.focused --pods 0 --trials 3  # idle memory only, 3 fresh starts
    .venv/bin/python -m bench.focused --pycri-env GOGC=off # an experiment on pycri's side

Each trial starts both runtimes fresh (idle memory is the memory of a fresh daemon), loads
the images, runs ``scenarios.run_rss`` on each and, unless ``--no-fsinfo``,
``fsinfo.run_image_fs_info`` on both, then stops them. It prints one JSON document: per
trial and runtime the idle / loaded / after-removal RSS and PSS of the daemon processes (by
process) and the ImageFsInfo latencies. It answers "what did this one change do" without
the whole comparison; ``bench.run`` runs the same scenarios in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
from typing import Any

from bench.cri import CriClient
from bench.daemons import (
    ContainerdCri,
    Pycri,
    Runtime,
    build_images,
    load_images,
    short_temp_dir,
)
from bench.fsinfo import run_image_fs_info
from bench.scenarios import run_rss
from bench.stats import summarize

MIB = 1024 * 1024


def _mib(sample: dict[str, Any]) -> dict[str, Any]:
    return {
        "rss": round(sample["daemon_bytes"] / MIB, 1),
        "pss": round(sample["daemon_pss_bytes"] / MIB, 1),
        "parts": {k: round(v / MIB, 1) for k, v in sample["parts"].items()},
        "parts_pss": {k: round(v / MIB, 1) for k, v in sample.get("parts_pss", {}).items()},
    }


async def _trial(*, pods: int, fsinfo: bool, pycri_env: dict[str, str]) -> dict[str, Any]:
    work_dir = short_temp_dir(prefix="bench-f-")
    pycri = Pycri(base=short_temp_dir(prefix="bench-p-"))
    containerd = ContainerdCri(base=short_temp_dir(prefix="bench-c-"))
    runtimes: list[Runtime] = [pycri, containerd]
    clients: dict[str, CriClient] = {}
    trial: dict[str, Any] = {}
    saved = {k: os.environ.get(k) for k in pycri_env}
    try:
        tarballs = await asyncio.to_thread(build_images, directory=work_dir)
        os.environ.update(pycri_env)
        pycri.start()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        containerd.start()
        for runtime in runtimes:
            await runtime.wait_ready()
            await load_images(runtime=runtime, tarballs=tarballs)
            clients[runtime.name] = CriClient(socket=runtime.cri_socket)
        for runtime in runtimes:

            async def sample(r: Runtime = runtime) -> dict[str, Any]:
                return dataclasses.asdict(await asyncio.to_thread(r.memory))

            result = await run_rss(
                client=clients[runtime.name],
                pods=pods,
                concurrency=4,
                run_label=f"focused-{runtime.name}",
                work_dir=work_dir,
                sample_memory=sample,
            )
            trial[runtime.name] = {
                "idle": _mib(result.idle),
                "loaded": _mib(result.loaded),
                "after": _mib(result.after_removal),
                "correctness": result.correctness.to_json(),
            }
        if fsinfo:
            for name, fs in (await run_image_fs_info(clients=clients)).items():
                trial[name]["fsinfo_ms"] = {
                    "burst_p50": round(summarize(fs.burst).p50 * 1e3, 3),
                    "paced_p50": round(summarize(fs.paced).p50 * 1e3, 3),
                    "paced": [round(v * 1e3, 3) for v in fs.paced],
                    "correctness": fs.correctness.to_json(),
                }
    finally:
        for client in clients.values():
            await client.close()
        for runtime in runtimes:
            await asyncio.to_thread(runtime.stop)
        shutil.rmtree(work_dir, ignore_errors=True)
    return trial


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    env = dict(item.split("=", 1) for item in args.pycri_env)
    return [
        await _trial(pods=args.pods, fsinfo=not args.no_fsinfo, pycri_env=env)
        for _ in range(args.trials)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.focused", description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, default=100, help="running pods for the loaded sample")
    p.add_argument("--trials", type=int, default=1, help="fresh starts of both runtimes")
    p.add_argument("--no-fsinfo", action="store_true", help="skip the ImageFsInfo calls")
    p.add_argument(
        "--pycri-env", action="append", default=[], metavar="KEY=VALUE", help="pycri's env"
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.focused: needs root", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(_main(args)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
