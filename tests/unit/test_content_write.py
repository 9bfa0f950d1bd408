"""The hand-framed content write (``encode_write_chunk``) is the message protobuf would send."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pycri.containerd import api
from pycri.containerd.client import encode_write_chunk


def _serialized(*, ref: str, offset: int, data: bytes) -> bytes:
    return api.content.WriteContentRequest(
        action=api.content.WRITE, ref=ref, offset=offset, data=data
    ).SerializeToString()


@given(
    ref=st.text(max_size=80),
    offset=st.integers(min_value=0, max_value=(1 << 63) - 1),
    data=st.binary(max_size=3000),
)
def test_framing_is_byte_identical_to_serialize(ref: str, offset: int, data: bytes) -> None:
    assert encode_write_chunk(ref=ref, offset=offset, data=data) == _serialized(
        ref=ref, offset=offset, data=data
    )


def test_large_chunks_and_varint_boundaries() -> None:
    ref = "pycri-pull-sha256-" + "ab" * 32
    for size in (1, 127, 128, 16383, 16384, (1 << 20) - 1, 1 << 20, 4 << 20):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for offset in (0, 1, 1 << 20, 1 << 40):
            framed = encode_write_chunk(ref=ref, offset=offset, data=data)
            assert framed == _serialized(ref=ref, offset=offset, data=data)
            parsed = api.content.WriteContentRequest.FromString(framed)
            assert (parsed.action, parsed.ref, parsed.offset) == (api.content.WRITE, ref, offset)
            assert parsed.data == data
