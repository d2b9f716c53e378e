"""Record CRCs computed ahead on another core (``rdformat.format.crc_ahead``): the same values as zlib's,
only for records that fit in the file, and a load that uses them raises exactly what a load without them
raises. Skipped without numba or zlib-ng (the walk needs both)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("zlib_ng")

import rdformat  # noqa: E402
from rdformat import errors  # noqa: E402
from rdformat.entropy import ans  # noqa: E402
from rdformat.file import reader as reader_module  # noqa: E402
from rdformat.format import crc_ahead  # noqa: E402
from rdformat.format import records as C  # noqa: E402


def model_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    tensors = {f"w{i}": rng.laplace(0, 0.02, (300, 200 + i)).astype(np.float32) for i in range(6)}
    tensors["b"] = rng.normal(size=17).astype(np.float32)
    buf = io.BytesIO()
    rdformat.save(tensors, buf, chunk_bytes=64 << 10)
    return buf.getvalue()


def records(data: bytes) -> list[tuple[int, int]]:
    """(payload offset, payload length) of every record, by the reference reader's own head parser."""
    src = C.Source(io.BytesIO(data), memory=memoryview(data))
    C.read_file_header(src)
    out = []
    while src.pos < len(data):
        head = C.read_record_head(src)
        out.append((head.offset + C.RECORD_HEADER_SIZE, head.length))
        src.skip(head.length + C.RECORD_TRAILER_SIZE, what="a record")
    return out


def test_walk_computes_zlibs_crc_of_every_record() -> None:
    data = model_bytes()
    ahead = crc_ahead.start(memoryview(data), C.FILE_HEADER_SIZE)
    assert ahead is not None
    ahead.join()
    recs = records(data)
    assert len(recs) > 10
    for offset, length in recs:
        assert ahead.crc(offset, length) == zlib.crc32(data[offset:offset + length])
    # asked for something it did not compute (another length, an offset it passed): None, never a guess
    fresh = crc_ahead.start(memoryview(data), C.FILE_HEADER_SIZE)
    fresh.join()
    offset, length = recs[3]
    assert fresh.crc(offset, length + 1) is None
    assert fresh.crc(offset, length) is not None
    assert fresh.crc(recs[0][0], recs[0][1]) is None  # behind the cursor


@pytest.mark.parametrize("seed", range(4))
def test_walk_never_leaves_the_buffer(seed: int) -> None:
    """Forged heads (random bytes, lengths past the end, a file cut short): the walk stops inside the buffer
    and whatever it reports is the true CRC of bytes inside it."""
    rng = np.random.default_rng(seed)
    data = bytearray(model_bytes(seed))
    cut = bytes(data[: int(rng.integers(20, len(data)))])
    noise = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    forged = bytearray(data)
    forged[C.FILE_HEADER_SIZE + 4 : C.FILE_HEADER_SIZE + 12] = (len(data) - 30).to_bytes(8, "little")
    huge = bytearray(data)
    huge[C.FILE_HEADER_SIZE + 4 : C.FILE_HEADER_SIZE + 12] = (1 << 63 | 5).to_bytes(8, "little")
    mutated = []
    for _ in range(100):  # random bytes of the first heads changed (lengths, types, the heads' own CRCs)
        m = bytearray(data)
        for at in rng.integers(C.FILE_HEADER_SIZE, min(len(m), 2000), size=3):
            m[at] = int(rng.integers(256))
        mutated.append(bytes(m))
    for buf in (cut, noise, bytes(forged), bytes(huge), b"", b"\x00" * 19, *mutated):
        ahead = crc_ahead.start(memoryview(buf), min(C.FILE_HEADER_SIZE, len(buf)))
        ahead.join()
        done = int(np.count_nonzero(ahead._crcs))
        for i in range(done):
            offset, length = int(ahead._offsets[i]), int(ahead._lengths[i])
            assert 0 <= offset and offset + length + 4 <= len(buf)
            assert int(ahead._crcs[i]) & 0xFFFFFFFF == zlib.crc32(buf[offset:offset + length])


def test_load_with_crcs_ahead_raises_what_a_load_without_them_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    data = model_bytes(1)
    recs = records(data)
    monkeypatch.setattr(reader_module, "CRC_AHEAD_MIN_BYTES", 0)
    monkeypatch.setenv("RDFORMAT_THREADS", "2")
    started = []
    real_start = crc_ahead.start
    monkeypatch.setattr(crc_ahead, "start", lambda *a: started.append(1) or real_start(*a))
    with ans.use_backend("numba"):
        want = rdformat.load(data)
        assert started  # the walk ran for this load
    for offset, length in recs[1::3]:
        bad = bytearray(data)
        bad[offset + length // 2] ^= 0x40
        outcomes = []
        for backend in ("numba", "numpy"):  # with the walk / without it
            with ans.use_backend(backend):
                try:
                    got = rdformat.load(bytes(bad))
                    outcomes.append(("ok", sorted(got)))
                except errors.RdcError as exc:
                    outcomes.append((type(exc).__name__, exc.offset, exc.record))
        assert outcomes[0] == outcomes[1] and outcomes[0][0] == "ChecksumError", outcomes
    with ans.use_backend("numba"):
        again = rdformat.load(data)
    assert all(np.array_equal(want[k], again[k]) for k in want)
