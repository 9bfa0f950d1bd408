from __future__ import annotations

import signal

import pytest
from cri_api.v1 import api_pb2

from pycri.service.container_stop import parse_signal
from pycri.service.rollback import Rollback
from pycri.service.sandbox_files import hosts_text, resolv_conf_text


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("", signal.SIGTERM),
        ("SIGTERM", signal.SIGTERM),
        ("TERM", signal.SIGTERM),
        ("9", 9),
        ("SIGQUIT", signal.SIGQUIT),
        ("SIGRTMIN+3", signal.SIGRTMIN + 3),
        ("bogus", signal.SIGTERM),
    ],
)
def test_parse_signal(name: str, number: int) -> None:
    assert parse_signal(name) == int(number)


def test_resolv_conf() -> None:
    dns = api_pb2.DNSConfig(servers=["10.0.0.10"], searches=["a.svc", "svc"], options=["ndots:5"])
    assert resolv_conf_text(dns) == "search a.svc svc\nnameserver 10.0.0.10\noptions ndots:5\n"


def test_hosts_has_hostname() -> None:
    assert "127.0.1.1\tweb" in hosts_text("web")
    assert "127.0.0.1\tlocalhost" in hosts_text("")


async def test_rollback_runs_in_reverse_and_survives_failing_steps() -> None:
    done: list[str] = []

    async def fail() -> None:
        raise RuntimeError("undo failed")

    with pytest.raises(ValueError):
        async with Rollback(what="x") as undo:
            undo.push("a", lambda: done.append("a"))
            undo.push("b", fail)

            async def c() -> None:
                done.append("c")

            undo.push("c", c)
            raise ValueError("create failed")
    assert done == ["c", "a"]


async def test_rollback_commit_keeps_everything() -> None:
    done: list[str] = []
    async with Rollback(what="x") as undo:
        undo.push("a", lambda: done.append("a"))
        undo.commit()
    assert done == []


def test_exec_commands_runc_can_start() -> None:
    from pycri.errors import InvalidArgument
    from pycri.service.container_exec import validate_cmd

    validate_cmd(["sh", "-c", ""])  # empty arguments are fine, an empty program is not
    for bad, message in (([], "must not be empty"), ([""], "cmd\\[0\\]"), (["a\0b"], "NUL")):
        with pytest.raises(InvalidArgument, match=message):
            validate_cmd(bad)


def test_truncated_exec_output_says_so() -> None:
    from pycri.cio.container_io import ExecOutput
    from pycri.service.container_exec import truncation_note

    whole = ExecOutput(stdout=b"x", stderr=b"", complete=True)
    assert truncation_note(whole) == b""
    cut = ExecOutput(
        stdout=b"x", stderr=b"", complete=True, stdout_dropped_bytes=7, stderr_dropped_bytes=0
    )
    assert b"dropped 7 bytes of stdout and 0 bytes of stderr" in truncation_note(cut)
