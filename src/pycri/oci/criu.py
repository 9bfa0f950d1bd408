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
import re
import shutil
from dataclasses import dataclass

from pycri.oci.commands import ask

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


async def criu_status(binary: str = CRIU) -> CriuStatus:
    """Find criu, read its version, and run ``criu check``."""
    found = await asyncio.to_thread(shutil.which, binary)
    if found is None:
        return CriuStatus(
            usable=False,
            problem=f"criu is not installed ({binary!r} not found; apt-get install criu)",
        )
    code, out = await ask(found, "--version", with_stderr=True)
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
    code, out = await ask(found, "check", timeout=CHECK_TIMEOUT_S, with_stderr=True)
    if code != 0:
        errors = [line for line in out.splitlines() if line.strip()]
        return CriuStatus(
            usable=False,
            binary=found,
            version=version,
            problem=f"criu {version} check fails on this kernel: " + "; ".join(errors[-6:]),
        )
    return CriuStatus(usable=True, binary=found, version=version)
