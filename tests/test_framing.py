"""Framing, sans I/O: any chunking of any stream gives the same frames; cuts are detected."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.transport import Transport
from bridge.framing import (
    HEADER_SIZE,
    OVERSIZED_HEAD_BYTES,
    Empty,
    FrameDecoder,
    Oversized,
    StreamDesync,
    encode_frame,
    encode_header,
)

payloads = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in points + [len(data)]:
        pieces.append(data[start:p])
        start = p
    return pieces


def decode_all(pieces, **kw) -> tuple[list, FrameDecoder]:
    decoder = FrameDecoder(**kw)
    out = []
    for piece in pieces:
        decoder.feed(piece)
        out.extend(decoder.frames())
    return out, decoder


@given(payloads, st.lists(st.integers(min_value=0), max_size=30))
def test_any_chunking_gives_the_same_frames(frames, cuts):
    stream = b"".join(encode_frame(p) for p in frames)
    out, decoder = decode_all(chunked(stream, cuts))
    assert out == frames
    assert decoder.pending() == 0


@given(payloads)
def test_byte_at_a_time(frames):
    stream = b"".join(encode_frame(p) for p in frames)
    out, _ = decode_all([stream[i : i + 1] for i in range(len(stream))])
    assert out == frames


@given(st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=5), st.data())
def test_truncation_at_every_offset_is_detected(frames, data):
    stream = b"".join(encode_frame(p) for p in frames)
    boundaries, pos = {0}, 0
    for p in frames:
        pos += HEADER_SIZE + len(p)
        boundaries.add(pos)
    for cut in range(len(stream) + 1):
        out, decoder = decode_all([stream[:cut]])
        complete = sum(1 for b in boundaries if 0 < b <= cut)
        assert out == frames[:complete]
        assert (decoder.pending() == 0) == (cut in boundaries), cut


@given(st.integers(min_value=65, max_value=5000), st.binary(max_size=100), st.lists(st.integers(0), max_size=10))
def test_oversized_frame_is_skipped_and_reported_once(size, after, cuts):
    big = bytes(range(256)) * (size // 256 + 1)
    big = big[:size]
    tail = encode_frame(after) if after else b""
    stream = encode_frame(big) + tail
    out, decoder = decode_all(chunked(stream, cuts), max_frame_bytes=64)
    expected_after = [] if not after else ([after] if len(after) <= 64 else [Oversized(len(after), after[:OVERSIZED_HEAD_BYTES])])
    assert out == [Oversized(size, big[:OVERSIZED_HEAD_BYTES])] + expected_after
    assert decoder.pending() == 0


def test_oversized_payload_is_never_buffered_whole():
    decoder = FrameDecoder(max_frame_bytes=1024)
    decoder.feed(encode_header(50_000_000))
    chunk = b"x" * 65536
    for _ in range(50_000_000 // 65536):
        decoder.feed(chunk)
        assert list(decoder.frames()) == []
        assert len(decoder._buf) == 0  # nothing of the skipped payload is kept but its head
    decoder.feed(b"x" * (50_000_000 % 65536) + encode_frame(b"ok"))
    out = list(decoder.frames())
    assert out[0].length == 50_000_000 and len(out[0].head) == OVERSIZED_HEAD_BYTES
    assert out[1:] == [b"ok"]


def test_empty_frame_is_an_item_of_its_own():
    out, _ = decode_all([encode_header(0) + encode_frame(b"a")])
    assert out == [Empty(), b"a"]


@pytest.mark.parametrize("text", [b"hello world\n", b'{"id": 1}', b"\xff\xff\xff\xff"])
def test_unframed_text_raises_desync(text):
    decoder = FrameDecoder()
    decoder.feed(text)
    with pytest.raises(StreamDesync) as info:
        list(decoder.frames())
    assert info.value.declared > 1024**3


@settings(max_examples=50, deadline=None)  # a large frame's buffer is allocated up front
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_header_round_trip(n):
    decoder = FrameDecoder(max_frame_bytes=2**32 - 1, desync_bytes=2**32 - 1)
    decoder.feed(encode_header(n))
    if n == 0:
        assert list(decoder.frames()) == [Empty()]
    else:
        assert list(decoder.frames()) == [] and decoder.wanted() == n


def test_header_rejects_impossible_lengths():
    with pytest.raises(ValueError):
        encode_header(2**32)
    with pytest.raises(ValueError):
        encode_header(-1)


@given(st.integers(min_value=65, max_value=3000), st.data())
def test_truncation_inside_an_oversized_frame_is_detected(size, data):
    stream = encode_frame(b"y" * size)
    cut = data.draw(st.integers(min_value=1, max_value=len(stream) - 1))
    out, decoder = decode_all([stream[:cut]], max_frame_bytes=64)
    assert out == [] and decoder.pending() == cut


def split_all(pieces, **kw):
    decoder = FrameDecoder(**kw)
    out = []
    for piece in pieces:
        buf = bytearray(piece)  # a reused read buffer: items must be taken before it changes
        for item in decoder.split(buf):
            out.append(bytes(item) if isinstance(item, memoryview) else item)
        buf[:] = b"\xee" * len(buf)
    return out, decoder


@given(payloads, st.lists(st.integers(min_value=0), max_size=30))
def test_split_agrees_with_frames_under_any_chunking(frames, cuts):
    stream = b"".join(encode_frame(p) for p in frames)
    out, decoder = split_all(chunked(stream, cuts))
    assert out == frames and decoder.pending() == 0


@given(st.integers(min_value=65, max_value=3000), st.binary(max_size=100), st.lists(st.integers(0), max_size=10))
def test_split_skips_oversized_frames_like_frames(size, after, cuts):
    stream = encode_frame(b"z" * size) + encode_frame(b"") + (encode_frame(after) if after else b"")
    via_split, _ = split_all(chunked(stream, cuts), max_frame_bytes=64)
    via_frames, _ = decode_all(chunked(stream, cuts), max_frame_bytes=64)
    assert via_split == via_frames


def test_split_returns_frames_before_a_desync_then_the_desync():
    decoder = FrameDecoder()
    items = decoder.split(encode_frame(b"a") + encode_frame(b"b") + b"hello world")
    assert [bytes(i) for i in items[:2]] == [b"a", b"b"]
    assert isinstance(items[2], StreamDesync) and len(items) == 3


def test_split_of_whole_frames_copies_nothing():
    data = bytearray(encode_frame(b"abc") + encode_frame(b"de"))
    items = FrameDecoder().split(data)
    assert all(isinstance(i, memoryview) and i.obj is data for i in items)


@settings(max_examples=40)
@given(st.lists(st.sampled_from([10, 300_000, 5, 262_144, 700_000]), min_size=1, max_size=4),
       st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_large_frames_assemble_in_place_under_any_chunking(sizes, cuts, direct):
    """Large frames are built in a buffer of their own size; reading straight into it gives the same frames."""
    frames = [bytes([i]) * n for i, n in enumerate(sizes)]
    stream = b"".join(encode_frame(p) for p in frames)
    decoder = FrameDecoder()
    out = []
    pos = 0
    for piece in chunked(stream, cuts):
        while piece:
            target = decoder.writable() if direct else None
            if target is not None:
                n = min(len(target), len(piece))
                target[:n] = piece[:n]
                target.release()
                decoder.advance(n)
                piece = piece[n:]
                out.extend(bytes(i) for i in decoder.split(b""))
            else:
                out.extend(bytes(i) for i in decoder.split(piece))
                piece = b""
        pos += 1
    assert out == frames and decoder.pending() == 0


def test_a_large_frame_is_returned_as_its_own_buffer_and_truncation_counts():
    payload = b"q" * 300_000
    decoder = FrameDecoder()
    stream = encode_frame(payload)
    assert decoder.split(stream[:1000]) == []
    assert decoder.pending() == 1000 and decoder.wanted() == len(payload) - 996
    (item,) = decoder.split(stream[1000:])
    assert type(item) is bytearray and item == payload


def test_write_frames_writes_small_frames_in_one_write_and_large_ones_as_write_would():
    r, w = os.pipe()
    try:
        transport = Transport(-1, w)
        small = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
        transport.write_frames(small)
        data = os.read(r, 1 << 16)
        assert data == b"".join(len(p).to_bytes(4, "big") + p for p in small)
        big = b"x" * (70 * 1024)  # above the size joined into one write
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(_read_all(r, 2 * (4 + len(big)) + 11)))
        reader.start()
        transport.write_frames([big, b'{"d":4}', big])
        reader.join(10)
        expected = b"".join(len(p).to_bytes(4, "big") + p for p in (big, b'{"d":4}', big))
        assert got == [expected]
    finally:
        os.close(r)
        os.close(w)


def _read_all(fd: int, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.read(fd, n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
