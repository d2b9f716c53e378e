"""Shared test helpers: every codec's and adapter's tests call these."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import ml_dtypes
import numpy as np

import rdformat

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"

ALL_DTYPES = [
    np.dtype(np.bool_),
    np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16),
    np.dtype(np.uint32), np.dtype(np.int32), np.dtype(np.uint64), np.dtype(np.int64),
    np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64),
    np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2),
]


def random_array(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...], *, special: bool = True) -> np.ndarray:
    """Random contents covering every bit pattern class of ``dtype`` (NaN, inf, -0 included for floats)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    # floats: a realistic Laplacian body plus arbitrary bit patterns (NaN payloads, inf, denormals)
    body = rng.laplace(0, 0.05, size=n).astype(np.float64).astype(dtype)
    if special and n:
        k = max(1, n // 10)
        pos = rng.integers(0, n, size=k)
        raw = rng.integers(0, 256, size=k * dtype.itemsize, dtype=np.uint8).view(dtype)
        body[pos] = raw
    return body.reshape(shape)


def assert_bit_exact(a: np.ndarray, b: np.ndarray) -> None:
    """Same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def roundtrip_bytes(tensors: dict, **save_kwargs) -> tuple[bytes, dict[str, np.ndarray]]:
    """Save to memory and load back; returns (file bytes, tensors)."""
    buf = io.BytesIO()
    rdformat.save(tensors, buf, **save_kwargs)
    data = buf.getvalue()
    return data, rdformat.load(data)


class NonSeekable(io.RawIOBase):
    """A stream that refuses to seek and returns short reads, like a pipe or socket."""

    def __init__(self, data: bytes, max_read: int = 4093) -> None:
        self._data = data
        self._pos = 0
        self._max = max_read
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self._data) - self._pos
        n = min(n, self._max)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        self.bytes_read += len(out)
        return out


class CountingFile(io.FileIO):
    """A real file that counts the bytes read through it."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path, "rb")
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        out = super().read(n)
        self.bytes_read += len(out)
        return out


def pipe_reader(data: bytes) -> io.BufferedReader:
    """A real OS pipe fed by a thread; returns its read end."""
    r, w = os.pipe()

    def feed() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return os.fdopen(r, "rb")


def stored_chunks(data: bytes):
    """(header, [(element count, codec data), ...]) of the first tensor of an .rdc file, read record by
    record: a TENSOR record and its CHUNK records, one SMALL record, or the group of the first member of
    a PACK record (its only member in these tests' files)."""
    from rdformat.format import records as C

    src = C.Source(io.BytesIO(data))
    C.read_file_header(src)
    head = C.read_record_head(src)
    payload = C.read_payload(src, head)
    if head.rtype == C.REC_SMALL:
        header, inline = C.parse_small(payload, head.offset + 16)
        return header, ([(header.numel, inline)] if header.chunk_count else [])
    if head.rtype in C.PACK_TYPES:
        members, groups = C.parse_pack_record(head.rtype, payload, head.offset + 16)
        m, g = members[0], groups[members[0].group]
        assert g.members == [0], "the first member shares its group"
        header = C.TensorHeader(m.name, m.dtype_code, m.shape, m.flags, max(m.numel, 1), 1 if m.numel else 0,
                                g.codec_id, g.codec_config)
        return header, ([(m.numel, g.data)] if m.numel else [])
    header = C.parse_tensor_header(payload, head.offset + 16)
    chunks = []
    for i in range(header.chunk_count):
        chead = C.read_record_head(src)
        chunk = C.parse_chunk(C.read_payload(src, chead), chead.offset + 16, i, header.name)
        chunks.append((min(header.chunk_elements, header.numel - i * header.chunk_elements), chunk))
    return header, chunks


#: Edge-case inputs every lossy quantizer's tests run: all zero, constant, empty and 0-d.
LOSSY_EDGE_ARRAYS = [np.zeros((30, 40), np.float32), np.full((30, 40), 0.75, np.float32),
                     np.zeros((0, 5), np.float32), np.float32(3.0).reshape(())]


def check_lossy_edge_case(quantized, x: np.ndarray, stored: bytes, atol: float) -> None:
    """The stored file decodes to the quantizer's own reconstruction, close to ``x``."""
    back = rdformat.load(stored)["t"]
    assert back.tobytes() == quantized.dequantize().tobytes()
    if x.size:
        assert np.allclose(back, x, atol=atol)


def check_refuses_non_finite(quantize) -> None:
    """``quantize(x, step)`` refuses NaN and infinities with a clear InvalidInputError."""
    import pytest

    from rdformat.errors import InvalidInputError

    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((10, 10), np.float32)
        x[3, 4] = bad
        with pytest.raises(InvalidInputError, match="NaN or inf"):
            quantize(x, 0.1)
