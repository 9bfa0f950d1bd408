"""Asking a host binary something (``runc features``, ``crun --version``, ``criu check``):
an asyncio subprocess, bounded in time, never raising.

The probes run at start and per checkpoint request; a binary that hangs must not hang pycri,
and one that is missing or crashes is an answer ("cannot"), not an error.
"""

from __future__ import annotations

import asyncio
import contextlib

DEFAULT_TIMEOUT_S = 10.0


async def ask(
    *argv: str, timeout: float = DEFAULT_TIMEOUT_S, with_stderr: bool = False
) -> tuple[int, str]:
    """(exit code, output) of ``argv``; stderr is merged into the output when asked for,
    else dropped. (-1, why) when it cannot be run or does not finish within ``timeout``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if with_stderr else asyncio.subprocess.DEVNULL,
        )
    except OSError as err:
        return -1, f"cannot run {argv[0]}: {err.strerror or err}"
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return -1, f"{argv[0]} did not answer within {timeout:.0f}s"
    return int(proc.returncode or 0), out.decode(errors="replace").strip()
