"""Whether CRIU can checkpoint containers on this node: the binary, its version, ``criu check``.

Checkpointing a container (CheckpointContainer) needs CRIU (Debian's ``criu``), which runc
runs, and a kernel CRIU can work with. ``criu check`` asks the kernel for every feature a
dump needs and fails naming what is missing or what it cannot parse; its error lines are
what CheckpointContainer answers with (FAILED_PRECONDITION), so the operator sees the real
reason (on Linux 6.13+ with CRIU 3.17, for instance, the vDSO layout CRIU does not know:
"vdso: Unexpected rt vDSO area bounds"). The probe runs for each request (a checkpoint is rare
and ``criu check`` takes a few tens of milliseconds), so installing criu or changing kernels
needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from dataclasses import dataclass

CRIU = "criu"
# kubelet's checkpoint API needs CRIU 3.16 or later (containerd and CRI-O ask for the same).
MIN_VERSION = (3, 16)
CHECK_TIMEOUT_S = 30.0
_VERSION = re.compile(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, kw_only=True)
class CriuStatus:
    usable: bool
    binary: str = ""
    version: str = ""
    problem: str = ""  # why it cannot checkpoint ("" when it can)


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return -1, f"timed out after {CHECK_TIMEOUT_S:.0f}s"
    return int(proc.returncode or 0), out.decode(errors="replace").strip()


async def criu_status(binary: str = CRIU) -> CriuStatus:
    """Find criu, read its version, and run ``criu check``."""
    found = await asyncio.to_thread(shutil.which, binary)
    if found is None:
        return CriuStatus(
            usable=False,
            problem=f"criu is not installed ({binary!r} not found; apt-get install criu)",
        )
    code, out = await _run(found, "--version")
    match = _VERSION.search(out)
    if code != 0 or match is None:
        return CriuStatus(usable=False, binary=found, problem=f"criu --version failed: {out}")
    version = ".".join(g for g in match.groups() if g is not None)
    if (int(match.group(1)), int(match.group(2))) < MIN_VERSION:
        wanted = ".".join(map(str, MIN_VERSION))
        return CriuStatus(
            usable=False,
            binary=found,
            version=version,
            problem=f"criu {version} is too old (checkpoints need {wanted} or later)",
        )
    code, out = await _run(found, "check")
    if code != 0:
        errors = [line for line in out.splitlines() if line.strip()]
        return CriuStatus(
            usable=False,
            binary=found,
            version=version,
            problem=f"criu {version} check fails on this kernel: " + "; ".join(errors[-6:]),
        )
    return CriuStatus(usable=True, binary=found, version=version)
