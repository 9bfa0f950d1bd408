"""Profiles of the pycri process under the benchmark loads, taken with py-spy.

py-spy samples the running daemon from outside (no code change, no restart): ``record``
writes collapsed stacks (``frame;frame;frame count`` per line, root first), ``dump`` prints
every thread's stack once. Profiles are taken in a separate pass after the measured runs,
because sampling slows the process it samples.

The summary answers "where does pycri spend its CPU": the frames that are on CPU themselves
(self samples, the leaf of each stack) and the pycri functions whose callees take the most
(inclusive samples, each stack counted once per function). Samples are taken with ``--gil``:
only the thread holding the GIL is recorded, i.e. Python code actually running (py-spy's
own idle detection does not work on this VM: it counts threads parked in a futex). Waits
that still show (the event loop in ``select``, an executor worker waiting for work) are
counted apart as ``idle`` and left out of the percentages.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PY_SPY = Path(sys.executable).parent / "py-spy"
SAMPLE_RATE = 100
# Leaves that are a thread waiting, not working.
IDLE_LEAVES = frozenset(
    {
        ("EpollSelector.select", "selectors.py"),
        ("_worker", "concurrent/futures/thread.py"),
        ("Thread.run", "threading.py"),
        ("ThreadedChildWatcher._do_waitpid", "asyncio/unix_events.py"),
        ("Condition.wait", "threading.py"),
    }
)
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True, kw_only=True)
class Frame:
    function: str
    file: str
    line: int

    @property
    def where(self) -> str:
        """``function (shortened/path.py:line)``: paths below ``site-packages`` or ``src``."""
        short = self.file
        for marker in ("site-packages/", "/src/", "/lib/python3."):
            if marker in short:
                short = short.split(marker, 1)[1]
                if marker == "/lib/python3.":
                    short = "stdlib/" + short.split("/", 1)[-1]
                break
        return (
            f"{self.function} ({short}:{self.line})" if self.line else f"{self.function} ({short})"
        )

    @property
    def in_pycri(self) -> bool:
        return self.file.startswith("pycri/") or "/pycri/" in self.file


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text.strip())
    if match is None:
        return Frame(function=text.strip(), file="", line=0)
    line = match.group("line")
    return Frame(function=match.group("function"), file=match.group("file"), line=int(line or 0))


def is_idle(frame: Frame) -> bool:
    return any(
        frame.function == function and frame.file.endswith(file) for function, file in IDLE_LEAVES
    )


@dataclass(frozen=True, kw_only=True)
class ProfileSummary:
    total_samples: int  # busy samples: the denominator of every share
    idle_samples: int
    top_self: list[tuple[str, int]]
    top_inclusive_pycri: list[tuple[str, int]]
    top_self_by_file: list[tuple[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {
            "total_samples": self.total_samples,
            "idle_samples": self.idle_samples,
            "top_self": self.top_self,
            "top_inclusive_pycri": self.top_inclusive_pycri,
            "top_self_by_file": self.top_self_by_file,
        }


def summarize_collapsed(text: str, *, top: int = 15) -> ProfileSummary:
    """Self and inclusive sample counts from py-spy's raw (collapsed) output."""
    self_counts: Counter[str] = Counter()
    file_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    idle = 0
    for raw_line in text.splitlines():
        stack, _, count_text = raw_line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(part) for part in stack.split(";")]
        # a thread name or process line (py-spy's --threads, --subprocesses) has no file
        frames = [f for f in frames if f.file]
        if not frames:
            continue
        leaf = frames[-1]
        if is_idle(leaf):
            idle += count
            continue
        total += count
        self_counts[leaf.where] += count
        file_counts[leaf.where.split(" (", 1)[1].split(":", 1)[0]] += count
        for where in {f.where.rsplit(":", 1)[0] + ")" for f in frames if f.in_pycri}:
            inclusive[where] += count
    return ProfileSummary(
        total_samples=total,
        idle_samples=idle,
        top_self=self_counts.most_common(top),
        top_inclusive_pycri=inclusive.most_common(top),
        top_self_by_file=file_counts.most_common(top),
    )


class PySpyRecording:
    """``py-spy record`` of one process, from ``start`` until ``stop`` (SIGINT)."""

    def __init__(self, *, pid: int, output: Path, rate: int = SAMPLE_RATE) -> None:
        self.pid = pid
        self.output = output
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = output.with_suffix(".log")

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(self.pid),
                    "--rate",
                    str(self.rate),
                    "--gil",
                    "--format",
                    "raw",
                    "--output",
                    str(self.output),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> str:
        """Stop sampling and return the collapsed stacks ('' if py-spy failed)."""
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            return self.output.read_text()
        except OSError:
            return ""


def dump(*, pid: int) -> str:
    """One ``py-spy dump`` of every thread's stack (with local variables left out)."""
    done = subprocess.run(
        [str(PY_SPY), "dump", "--pid", str(pid)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout if done.returncode == 0 else done.stderr
