"""Trellis-coded quantization: the dq codec, its producer and its place in rate control."""

from __future__ import annotations

import io
import math

import hypothesis.extra.numpy as hnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdformat
from rdformat.codecs.dq import DQCodec, dq_reconstruct
from rdformat.errors import CorruptDataError, InvalidInputError
from rdformat.producers.quantize import magnitude_prune, quantize_rdo
from rdformat.producers.trellis import quantize_trellis

from helpers import LOSSY_EDGE_ARRAYS, check_lossy_edge_case, check_refuses_non_finite, stored_chunks


def _store(q, chunk_bytes=1 << 22, small_records=True) -> bytes:
    buf = io.BytesIO()
    with rdformat.Writer(buf, chunk_bytes=chunk_bytes, small_records=small_records) as w:
        w.add("t", q.prepared())
    return buf.getvalue()


def _stored_levels(data: bytes) -> np.ndarray:
    """The levels as stored, chunk by chunk, through the codec (not through reconstruction)."""
    header, chunks = stored_chunks(data)
    assert header.codec_id == "dq"
    codec = DQCodec.from_config(header.codec_config)
    assert header.chunk_elements % codec.chain == 0 or header.chunk_count <= 1
    out = [codec.decode_levels(chunk, count) for count, chunk in chunks]
    return np.concatenate(out) if out else np.zeros(0, np.int32)


def _reference_reconstruct(levels, step, chain):
    """Spec 5.4 written literally, one element at a time."""
    next_state = [[0, 2], [2, 0], [1, 3], [3, 1]]
    out = []
    state = 0
    for i, k in enumerate(int(v) for v in levels):
        if i % chain == 0:
            state = 0
        quantizer = state >> 1
        out.append(0.0 if k == 0 else math.copysign((2 * abs(k) - quantizer) * step, k))
        state = next_state[state][k & 1]
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("n,chain", [(1, 1), (7, 3), (64, 64), (300, 64), (1000, 256), (5, 256)])
def test_reconstruction_matches_the_literal_rule(n, chain):
    rng = np.random.default_rng(n * 7 + chain)
    levels = rng.integers(-9, 10, size=n).astype(np.int32)
    levels[rng.random(n) < 0.3] = 0
    got = dq_reconstruct(levels, 0.37, chain, np.dtype(np.float64))
    np.testing.assert_array_equal(got, _reference_reconstruct(levels, 0.37, chain))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=50),
    st.floats(0.0, 1.0),
    st.floats(1e-3, 10.0),
    st.sampled_from([np.float32, np.float16, np.float64, ml_dtypes.bfloat16]),
    st.integers(0, 2**31),
    st.sampled_from([64, 1000, 1 << 20]),
    st.sampled_from([1, 5, 64, 256]),
)
def test_decoded_levels_are_exactly_the_encoder_choice(shape, sparsity, step, dtype, seed, chunk_bytes, chain):
    rng = np.random.default_rng(seed)
    x = magnitude_prune(rng.laplace(0, 1.0, size=shape).astype(dtype), sparsity)
    before = x.copy()
    q = quantize_trellis(x, step, chain=chain)
    data = _store(q, chunk_bytes)
    np.testing.assert_array_equal(_stored_levels(data), q.levels.reshape(-1))
    back = rdformat.load(data)["t"]
    assert back.dtype == np.dtype(dtype) and back.shape == x.shape
    assert back.tobytes() == q.dequantize().tobytes()
    assert x.tobytes() == before.tobytes()  # the caller's array is untouched
    # every reconstruction is within a few steps (the trellis may trade a little error for rate)
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert np.max(err, initial=0) <= 4 * q.step + 0.02 * float(np.max(np.abs(x.astype(np.float64)), initial=0))


@pytest.mark.parametrize("x", LOSSY_EDGE_ARRAYS)
def test_all_zero_constant_empty_and_scalar(x):
    q = quantize_trellis(x, 0.05)
    check_lossy_edge_case(q, x, _store(q), atol=0.1)


def test_nan_and_inf_refused():
    check_refuses_non_finite(quantize_trellis)


def test_config_roundtrip_and_validation():
    c = DQCodec(0.125, 64)
    assert DQCodec.from_config(c.get_config()) == c
    assert "chain=64" in repr(c)
    for bad in ({"step": -1.0, "chain": 4}, {"step": float("inf"), "chain": 4}, {"step": 1.0, "chain": 0},
                {"step": 1.0, "chain": 1025}, {"step": 1.0, "chain": 2.5}, {"step": 1.0, "chain": True},
                {"step": 1.0}, {"step": 1.0, "chain": 4, "extra": 1}):
        with pytest.raises(CorruptDataError):
            DQCodec.from_config(bad)


def test_writer_keeps_chains_inside_chunks():
    x = np.random.default_rng(3).laplace(0, 1, (97, 131)).astype(np.float32)
    q = quantize_trellis(x, 0.1, chain=100)
    data = _store(q, chunk_bytes=1000)  # 250 elements per chunk unless rounded to a multiple of 100
    np.testing.assert_array_equal(_stored_levels(data), q.levels.reshape(-1))  # checks chunk_elements % 100
    assert rdformat.load(data)["t"].tobytes() == q.dequantize().tobytes()


def _curve_point(q, x):
    data = _store(q)
    back = rdformat.load(data)["t"].astype(np.float64)
    return 8 * len(data) / x.size, float(np.mean(np.abs(back - x)))


def test_trellis_beats_scalar_quantization_at_high_rate():
    """At ~3.5 bits/weight on Laplacian data, dq needs clearly fewer bits than sq for the same error."""
    x = np.random.default_rng(5).laplace(0, 1, (400, 500)).astype(np.float32)
    bits_dq, d_dq = _curve_point(quantize_trellis(x, 0.25, distortion="mae"), x)
    sq = sorted(_curve_point(quantize_rdo(x, s, distortion="mae"), x) for s in (0.3, 0.4, 0.5, 0.6, 0.8))
    # sq bits at dq's distortion (log-linear interpolation between the bracketing points)
    for (b0, d0), (b1, d1) in zip(sq, sq[1:]):
        if d1 <= d_dq <= d0:
            t = (math.log(d_dq) - math.log(d0)) / (math.log(d1) - math.log(d0))
            bits_sq = b0 + t * (b1 - b0)
            break
    else:
        pytest.fail(f"distortion {d_dq} outside the sq sweep {sq}")
    assert bits_dq < bits_sq - 0.1, (bits_dq, bits_sq)
    assert bits_dq - math.log2(1.0 / d_dq) < 0.3  # gap to the Laplacian R(D)


def test_model_save_with_each_method():
    rng = np.random.default_rng(0)
    tensors = {"w": rng.laplace(0, 0.1, (128, 96)).astype(np.float32), "b": rng.standard_normal(96).astype(np.float32)}
    for method in ("sq", "dq", "auto"):
        buf = io.BytesIO()
        summary = rdformat.save(tensors, buf, rel_error=0.05, method=method)
        with rdformat.open(io.BytesIO(buf.getvalue())) as f:
            assert f.info("w").codec == summary["method"]
            if method != "auto":
                assert summary["method"] == method
            w = f.get_tensor("w")
            b = f.get_tensor("b")  # 1-D with 96 values: quantized with a fine step
            assert f.info("b").codec == "sq"
            assert np.linalg.norm(b - tensors["b"]) < 0.005 * np.linalg.norm(tensors["b"])
        err = np.linalg.norm(w - tensors["w"]) / math.sqrt(sum(float(np.sum(a ** 2)) for a in tensors.values()))
        assert 0.035 < err < 0.065
    with pytest.raises(InvalidInputError, match="unknown lossy method"):
        rdformat.save(tensors, io.BytesIO(), rel_error=0.05, method="vq")
    with pytest.raises(InvalidInputError, match="needs a target"):
        rdformat.save(tensors, io.BytesIO(), codec="dq")


def test_corrupt_dq_chunk_raises_rdformat_errors():
    x = np.random.default_rng(9).laplace(0, 1, (64, 64)).astype(np.float32)
    data = bytearray(_store(quantize_trellis(x, 0.2), small_records=False))
    # Flip payload bytes but keep the CRCs valid, so the codec itself must notice.
    from rdformat.format import records as C

    src = C.Source(io.BytesIO(bytes(data)))
    C.read_file_header(src)
    head = C.read_record_head(src)
    C.read_payload(src, head)
    chead = C.read_record_head(src)
    body = chead.offset + 16
    for pos in range(body + 9, body + 30):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        payload = bytes(bad[body : body + chead.length])
        bad[body + chead.length : body + chead.length + 4] = C.crc32(payload).to_bytes(4, "little")
        try:
            rdformat.load(bytes(bad))
        except rdformat.RdcError:
            pass  # a clear rdformat error; anything else (IndexError, ValueError...) fails the test


def _row_scaled_levels(rows=64, cols=300, seed=11) -> np.ndarray:
    """Levels whose scale changes from row to row, like the weights of a real layer."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(-2.0, 2.0, size=(rows, 1)))
    return np.rint(rng.laplace(0, 1.0, (rows, cols)) * scale).astype(np.int32)


def test_classes_mode_is_used_for_row_scaled_levels_and_round_trips():
    from rdformat.codecs.dq import MODE_CLASSES
    from rdformat.codecs.sq import encode_levels
    from rdformat.format.dtypes import by_numpy

    levels = _row_scaled_levels()
    codec = DQCodec(0.01, 64, segment_hint=levels.shape[1])
    payload = codec.encode_chunk(levels.reshape(-1), by_numpy(np.dtype(np.float32)))
    assert payload[0] == MODE_CLASSES
    assert len(payload) < 0.95 * len(encode_levels(levels.reshape(-1), "dq"))  # classes pay off here
    np.testing.assert_array_equal(codec.decode_levels(memoryview(payload), levels.size), levels.reshape(-1))
    got = codec.decode_chunk(memoryview(payload), levels.size, by_numpy(np.dtype(np.float32)))
    np.testing.assert_array_equal(got, dq_reconstruct(levels, 0.01, 64, np.dtype(np.float32)))


def test_classes_mode_with_a_short_last_segment_round_trips():
    """The last segment of a CLASSES chunk may be short: its class's levels end early (decoded by segment
    rows, the padding cut off again), on every backend."""
    from rdformat.codecs.dq import MODE_CLASSES
    from rdformat.entropy import ans
    from rdformat.format.dtypes import by_numpy

    f32 = by_numpy(np.dtype(np.float32))
    zero_rows = _row_scaled_levels(seed=3)
    zero_rows[::3] = 0  # a class of all-zero rows: its part is a ZERO payload, no ANS block
    for cut, source in ((1, None), (37, None), (299, None), (5, zero_rows)):
        levels = (_row_scaled_levels(seed=cut) if source is None else source).reshape(-1)[:-cut]
        codec = DQCodec(0.01, 64, segment_hint=300)
        payload = codec.encode_chunk(levels, f32)
        assert payload[0] == MODE_CLASSES
        for backend in ans.available_backends():
            with ans.use_backend(backend):
                np.testing.assert_array_equal(codec.decode_levels(memoryview(payload), levels.size), levels)
                got = codec.decode_chunk(memoryview(payload), levels.size, f32)
                np.testing.assert_array_equal(got, dq_reconstruct(levels, 0.01, 64, np.dtype(np.float32)))


def test_classes_mode_damage_raises_rdformat_errors():
    from rdformat.format.dtypes import by_numpy

    levels = _row_scaled_levels(rows=24, cols=200)
    codec = DQCodec(0.01, 64, segment_hint=200)
    f32 = by_numpy(np.dtype(np.float32))
    payload = codec.encode_chunk(levels.reshape(-1), f32)
    assert payload[0] == 3
    for cut in range(len(payload)):  # every truncation
        with pytest.raises(rdformat.RdcError):
            codec.decode_chunk(memoryview(payload[:cut]), levels.size, f32)
    with pytest.raises(CorruptDataError, match="trailing"):
        codec.decode_chunk(memoryview(payload + b"\0"), levels.size, f32)
    for field in (b"\0\0\0\0" + payload[5:6], b"\0\0\0\1" + payload[5:6], payload[1:5] + b"\x09",
                  payload[1:5] + b"\x01", (7).to_bytes(4, "little") + payload[5:6]):
        bad = payload[:1] + field + payload[6:]  # bad segment length or class count
        with pytest.raises(rdformat.RdcError):
            codec.decode_chunk(memoryview(bad), levels.size, f32)
    rng = np.random.default_rng(0)
    for _ in range(300):  # random byte damage: decodes or fails cleanly, never anything else
        bad = bytearray(payload)
        bad[rng.integers(0, len(bad))] ^= 1 << int(rng.integers(0, 8))
        try:
            codec.decode_chunk(memoryview(bytes(bad)), levels.size, f32)
        except rdformat.RdcError:
            pass
