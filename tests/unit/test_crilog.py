"""CRI log format: timestamps, line splitting, and the file writer (behaviour 59)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycri.cio.crilog import (
    DEFAULT_MAX_LINE_SIZE,
    CriLogWriter,
    LineSplitter,
    LogWriterClosedError,
    encode_record,
    format_rfc3339nano,
    local_timestamp,
)

LINE_RE = re.compile(
    rb"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<stream>stdout|stderr) (?P<tag>[PF]) (?P<content>.*)$"
)

# 2021-03-04T05:06:07Z
BASE_NS = int(dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.UTC).timestamp()) * 1_000_000_000


def parse(data: bytes) -> list[tuple[str, str, bytes]]:
    """(stream, tag, content) of each line, checking the whole line's shape."""
    assert data.endswith(b"\n") or not data
    out = []
    for line in data.split(b"\n")[:-1]:
        match = LINE_RE.match(line)
        assert match, line[:200]
        out.append((match["stream"].decode(), match["tag"].decode(), match["content"]))
    return out


# --------------------------------------------------------------------------------------------
# Timestamps


@pytest.mark.parametrize(
    ("unix_ns", "utc_offset", "expected"),
    [
        (BASE_NS, 0, "2021-03-04T05:06:07Z"),
        (BASE_NS + 123_456_789, 0, "2021-03-04T05:06:07.123456789Z"),
        (BASE_NS + 120_000_000, 0, "2021-03-04T05:06:07.12Z"),
        (BASE_NS + 1, 0, "2021-03-04T05:06:07.000000001Z"),
        (BASE_NS + 500_000_000, 7200, "2021-03-04T07:06:07.5+02:00"),
        (BASE_NS, -(5 * 3600 + 30 * 60), "2021-03-03T23:36:07-05:30"),
        (BASE_NS, 20700, "2021-03-04T10:51:07+05:45"),
    ],
)
def test_rfc3339nano_matches_go(unix_ns: int, utc_offset: int, expected: str) -> None:
    assert format_rfc3339nano(unix_ns, utc_offset=utc_offset) == expected


def test_local_timestamp_uses_local_zone() -> None:
    now = time.time_ns()
    offset = time.localtime(now // 1_000_000_000).tm_gmtoff
    assert local_timestamp(now) == format_rfc3339nano(now, utc_offset=offset)
    # Same second, other fraction: the cached prefix must not leak the old fraction.
    second = now - now % 1_000_000_000
    assert local_timestamp(second) == format_rfc3339nano(second, utc_offset=offset)
    parsed = dt.datetime.fromisoformat(local_timestamp(second).replace("Z", "+00:00"))
    assert parsed.timestamp() == second // 1_000_000_000


# --------------------------------------------------------------------------------------------
# Splitting


def test_encode_record_exact() -> None:
    assert (
        encode_record(timestamp="2021-03-04T05:06:07Z", stream="stdout", tag="F", content=b"hi")
        == b"2021-03-04T05:06:07Z stdout F hi\n"
    )


def test_full_lines_and_empty_line() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"hello\n\nworld\n") == [("F", b"hello"), ("F", b""), ("F", b"world")]
    assert splitter.finish() == []


def test_long_line_is_cut_into_partial_chunks() -> None:
    splitter = LineSplitter(max_line_size=16384)
    line = bytes(range(32, 127)) * 421 + b"x" * 5  # 40 000 bytes, no newline
    assert len(line) == 40_000
    records = splitter.feed(line + b"\n")
    assert [(tag, len(content)) for tag, content in records] == [
        ("P", 16384),
        ("P", 16384),
        ("F", 40_000 - 2 * 16384),
    ]
    assert b"".join(content for _, content in records) == line


def test_line_of_exactly_the_limit_is_full() -> None:
    splitter = LineSplitter(max_line_size=8)
    assert splitter.feed(b"12345678\n") == [("F", b"12345678")]
    assert splitter.feed(b"1234567812345678\n") == [("P", b"12345678"), ("F", b"12345678")]


def test_partial_chunks_are_emitted_before_the_newline_arrives() -> None:
    splitter = LineSplitter(max_line_size=4)
    assert splitter.feed(b"abcd") == []  # could still be a full line of 4
    assert splitter.feed(b"e") == [("P", b"abcd")]
    assert splitter.unfinished_bytes == 1
    assert splitter.feed(b"f\n") == [("F", b"ef")]


def test_unterminated_data_at_eof_is_partial() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"done\nno newline") == [("F", b"done")]
    assert splitter.finish() == [("P", b"no newline")]
    assert splitter.finish() == []


def test_crlf_is_stripped_also_across_reads() -> None:
    splitter = LineSplitter(max_line_size=4)
    assert splitter.feed(b"a\r\nb\r") == [("F", b"a")]
    assert splitter.feed(b"\n") == [("F", b"b")]
    # Four bytes and a CR: the CR may still become part of CRLF, so nothing is cut yet.
    assert splitter.feed(b"abcd\r") == []
    assert splitter.feed(b"\n") == [("F", b"abcd")]
    # A lone CR inside a line is content.
    assert splitter.feed(b"x\ry\n") == [("F", b"x\ry")]


def test_cutting_disabled() -> None:
    for limit in (0, -1):
        splitter = LineSplitter(max_line_size=limit)
        assert splitter.feed(b"y" * 100_000 + b"\n") == [("F", b"y" * 100_000)]


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
    limit=st.integers(min_value=1, max_value=20),
)
def test_records_do_not_depend_on_how_reads_are_cut(
    data: bytes, cuts: list[int], limit: int
) -> None:
    whole = LineSplitter(max_line_size=limit)
    expected = whole.feed(data) + whole.finish()
    pieces = LineSplitter(max_line_size=limit)
    got = []
    start = 0
    for cut in sorted(cuts):
        got += pieces.feed(data[start:cut])
        start = max(start, cut)
    got += pieces.feed(data[start:]) + pieces.finish()
    assert got == expected
    for tag, content in expected:
        assert len(content) <= limit + 1  # +1: a lone trailing CR at EOF
        assert tag in ("P", "F")


# --------------------------------------------------------------------------------------------
# Writer


async def test_writer_exact_line(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = await CriLogWriter.open(path=str(path))
    writer.write_records(stream="stdout", records=[("F", b"hello")], unix_ns=BASE_NS)
    await writer.flush()
    offset = time.localtime(BASE_NS // 1_000_000_000).tm_gmtoff
    expected_ts = format_rfc3339nano(BASE_NS, utc_offset=offset)
    assert path.read_bytes() == f"{expected_ts} stdout F hello\n".encode()
    assert await writer.close()
    assert os.stat(path).st_mode & 0o777 == 0o640


async def test_stream_feeds_and_eof(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = await CriLogWriter.open(path=str(path))
    out = writer.stream("stdout")
    out.feed(b"hello\n")
    out.feed(b"x" * 40_000 + b"\r\n")
    out.feed(b"tail")
    out.finish()
    await writer.close()
    lines = parse(path.read_bytes())
    assert lines == [
        ("stdout", "F", b"hello"),
        ("stdout", "P", b"x" * 16384),
        ("stdout", "P", b"x" * 16384),
        ("stdout", "F", b"x" * (40_000 - 2 * 16384)),
        ("stdout", "P", b"tail"),
    ]


async def test_stdout_and_stderr_never_interleave_within_a_line(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = await CriLogWriter.open(path=str(path))
    out, err = writer.stream("stdout"), writer.stream("stderr")
    out.feed(b"out-1\nout-2 begins ")
    err.feed(b"err-1\n")
    out.feed(b"and ends\n")
    err.feed(b"err-2\n")
    await writer.close()
    assert parse(path.read_bytes()) == [
        ("stdout", "F", b"out-1"),
        ("stderr", "F", b"err-1"),
        ("stdout", "F", b"out-2 begins and ends"),
        ("stderr", "F", b"err-2"),
    ]


async def test_reopen_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = await CriLogWriter.open(path=str(path))
    out = writer.stream("stdout")
    out.feed(b"before\n")
    await writer.flush()
    rotated = tmp_path / "c.log.20240101-000000"
    path.rename(rotated)
    out.feed(b"between\n")  # after the rename, before reopen: still the old file
    await writer.flush()
    await writer.reopen()
    out.feed(b"after\n")
    await writer.close()
    assert [c for _, _, c in parse(rotated.read_bytes())] == [b"before", b"between"]
    assert [c for _, _, c in parse(path.read_bytes())] == [b"after"]


async def test_reopen_failure_keeps_the_old_file(tmp_path: Path) -> None:
    directory = tmp_path / "pod"
    directory.mkdir()
    path = directory / "c.log"
    writer = await CriLogWriter.open(path=str(path))
    moved = tmp_path / "moved"
    directory.rename(moved)  # the path's directory is gone: reopen cannot create the file
    with pytest.raises(FileNotFoundError):
        await writer.reopen()
    writer.stream("stderr").feed(b"still here\n")
    await writer.close()
    assert parse((moved / "c.log").read_bytes()) == [("stderr", "F", b"still here")]


async def test_reopen_after_close_fails_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = await CriLogWriter.open(path=str(path))
    await writer.close()
    path.unlink()
    with pytest.raises(LogWriterClosedError):
        await writer.reopen()
    assert not path.exists()
    writer.stream("stdout").feed(b"dropped\n")  # no error, nothing written
    assert not path.exists()
    assert await writer.close()  # idempotent


async def test_write_errors_are_logged_and_draining_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # /dev/full accepts the open and fails every write with ENOSPC.
    writer = await CriLogWriter.open(path="/dev/full")
    out = writer.stream("stdout")
    with caplog.at_level(logging.ERROR, logger="pycri.cio.crilog"):
        for i in range(5):
            out.feed(b"line %d\n" % i)
            await out.wait_writable()
            await writer.flush()
    errors = [r for r in caplog.records if "writing container log failed" in r.getMessage()]
    assert len(errors) == 1  # rate limited
    assert getattr(errors[0], "log_path", None) == "/dev/full"
    assert writer.buffered_bytes == 0
    await writer.close()


async def test_back_pressure_bounds_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = await CriLogWriter.open(path=str(path), max_buffered_bytes=1000)
    out = writer.stream("stdout")
    out.feed(b"z" * 2000 + b"\n")
    waiter = asyncio.ensure_future(out.wait_writable())
    await asyncio.sleep(0)
    assert writer.buffered_bytes > 1000
    await asyncio.wait_for(waiter, 5)  # released once the flusher wrote the batch
    assert writer.buffered_bytes == 0
    await writer.close()
    assert parse(path.read_bytes()) == [("stdout", "F", b"z" * 2000)]


async def test_ten_thousand_lines_are_fast(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = await CriLogWriter.open(path=str(path))
    out = writer.stream("stdout")
    started = time.monotonic()
    for i in range(10_000):
        out.feed(b"line number %d\n" % i)
        await out.wait_writable()
    await writer.close()
    elapsed = time.monotonic() - started
    lines = parse(path.read_bytes())
    assert len(lines) == 10_000
    assert lines[-1] == ("stdout", "F", b"line number 9999")
    assert elapsed < 2.0, elapsed


def test_default_limit_is_16k() -> None:
    assert DEFAULT_MAX_LINE_SIZE == 16384
