"""Lossy codec (sq), quantizers and model-wide rate control."""

from __future__ import annotations

import io

import hypothesis.extra.numpy as hnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdformat
from rdformat.codecs.sq import MAX_LEVEL, SQCodec, unzigzag, zigzag
from rdformat.entropy import ans
from rdformat.format.dtypes import by_numpy
from rdformat.errors import CorruptDataError, InvalidInputError
from rdformat.producers.quantize import magnitude_prune, quantize_rdo, quantize_uniform
from rdformat.producers.ratecontrol import plan

from helpers import (LOSSY_EDGE_ARRAYS, SHARED_MODELS, check_lossy_edge_case, check_refuses_non_finite,
                     stored_chunks)


def _store(q, chunk_bytes=1 << 22):
    buf = io.BytesIO()
    with rdformat.Writer(buf, chunk_bytes=chunk_bytes) as w:
        w.add("t", q.prepared())
    return buf.getvalue()


def _levels_from_file(data: bytes) -> np.ndarray:
    """Decode the stored levels chunk by chunk through the codec (not through dequantization)."""
    header, chunks = stored_chunks(data)
    codec = SQCodec.from_config(header.codec_config)
    out = [codec.decode_levels(chunk, count) for count, chunk in chunks]
    return np.concatenate(out) if out else np.zeros(0, np.int32)


def test_zigzag_roundtrip():
    q = np.array([0, -1, 1, -2, 2, MAX_LEVEL, -MAX_LEVEL], np.int32)
    assert zigzag(q).tolist()[:5] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(unzigzag(zigzag(q)), q)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40),
    st.floats(0.0, 1.0),
    st.floats(1e-3, 10.0),
    st.sampled_from([np.float32, np.float16, np.float64, ml_dtypes.bfloat16]),
    st.integers(0, 2**31),
    st.sampled_from([64, 1000, 1 << 20]),
)
def test_decoded_levels_are_exactly_the_encoder_choice(shape, sparsity, step, dtype, seed, chunk_bytes):
    rng = np.random.default_rng(seed)
    x = rng.laplace(0, 1.0, size=shape).astype(dtype)
    x = magnitude_prune(x, sparsity)
    before = x.copy()
    q = quantize_rdo(x, step)
    data = _store(q, chunk_bytes)
    np.testing.assert_array_equal(_levels_from_file(data), q.levels.reshape(-1))
    back = rdformat.load(data)["t"]
    assert back.dtype == np.dtype(dtype) and back.shape == x.shape
    assert back.tobytes() == q.dequantize().tobytes()
    assert x.tobytes() == before.tobytes()  # the caller's array is untouched
    # zeros stay zero; the reconstruction error is bounded by one step
    assert np.all(back[x == 0] == 0)
    # RDO may zero a lone large value when its level would cost many bits: bounded by ~1.6 steps
    assert np.max(np.abs(back.astype(np.float64) - x.astype(np.float64)), initial=0) <= q.step * 2 + 1e-2


@pytest.mark.parametrize("x", LOSSY_EDGE_ARRAYS)
def test_all_zero_constant_empty_and_scalar(x):
    q = quantize_rdo(x, 0.1)
    check_lossy_edge_case(q, x, _store(q), atol=0.1)


def test_nan_and_inf_refused():
    check_refuses_non_finite(quantize_rdo)
    check_refuses_non_finite(quantize_uniform)


def test_non_finite_tensor_stays_lossless_in_model_save():
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    y = x.copy()
    y[0, 0] = np.nan
    buf = io.BytesIO()
    rdformat.save({"x": x, "y": y}, buf, bits=3, method="sq")
    with rdformat.open(io.BytesIO(buf.getvalue())) as f:
        assert f.info("x").codec == "sq"
        assert f.info("y").codec == "bytesplit"
        assert f.get_tensor("y").tobytes() == y.tobytes()


def test_codec_config_roundtrip_and_validation():
    c = SQCodec(0.125, 0.2, 0.1)
    assert SQCodec.from_config(c.get_config()) == c
    assert "0.125" in repr(c)
    for bad in ({"step": -1.0}, {"step": float("nan")}, {"step": 1.0, "offset1": 1.5}, {"step": 1.0, "x": 1}, {}):
        with pytest.raises(CorruptDataError):
            SQCodec.from_config(bad)


def test_integer_levels_required():
    with pytest.raises(InvalidInputError):
        SQCodec(1.0).encode_chunk(np.ones(4, np.float32), by_numpy(np.dtype(np.float32)))
    with pytest.raises(InvalidInputError):
        SQCodec(1.0).encode_chunk(np.array([MAX_LEVEL + 1], np.int32), by_numpy(np.dtype(np.float32)))


def test_rdo_beats_plain_rounding_in_rate_distortion():
    x = np.random.default_rng(1).laplace(0, 1, (300, 300)).astype(np.float32)

    def point(q):
        data = _store(q)
        back = rdformat.load(data)["t"]
        return 8 * len(data) / x.size, float(np.mean((back - x) ** 2))

    r_rdo, d_rdo = point(quantize_rdo(x, 1.0))
    # find the uniform step with the same rate, compare distortion
    best = min((abs(point(quantize_uniform(x, s))[0] - r_rdo), s) for s in np.geomspace(0.5, 4, 25))[1]
    r_u, d_u = point(quantize_uniform(x, best))
    assert abs(r_u - r_rdo) < 0.15
    assert d_rdo < d_u


def test_magnitude_prune_exact_sparsity():
    x = np.random.default_rng(2).standard_normal(1000)
    y = magnitude_prune(x, 0.9)
    assert np.count_nonzero(y == 0) == 900
    assert np.all(np.abs(y[y != 0]) >= np.abs(x[y == 0]).max())
    assert np.count_nonzero(x == 0) == 0  # input untouched


def _model(seed=3):
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.laplace(0, 0.05, (256, 128)).astype(np.float32),
        "fc1.bias": rng.standard_normal(256).astype(np.float32),
        "fc2.weight": rng.laplace(0, 0.02, (64, 256)).astype(np.float32),
        "head.weight": rng.laplace(0, 0.1, (10, 64)).astype(np.float32),
        "steps": np.array([3], np.int64),
    }


def _rel_error(model, back):
    num = sum(float(np.sum((back[k].astype(np.float64) - v) ** 2)) for k, v in model.items() if v.dtype.kind == "f")
    den = sum(float(np.sum(v.astype(np.float64) ** 2)) for k, v in model.items() if v.dtype.kind == "f")
    return (num / den) ** 0.5


@pytest.mark.parametrize("bits", [1.0, 3.0, 6.0])
def test_rate_control_bits_target(bits):
    model = _model()
    buf = io.BytesIO()
    rdformat.save(model, buf, bits=bits)
    back = rdformat.load(buf.getvalue())
    with rdformat.open(io.BytesIO(buf.getvalue())) as f:
        lossy = [n for n in f.keys() if f.info(n).codec in ("sq", "dq")]
        weights = [n for n in lossy if model[n].ndim >= 2]
        stored = sum(f.info(n).stored_bytes for n in weights)
        n = sum(model[k].size for k in weights)
        assert f.info("fc1.bias").codec == "sq"  # 1-D with 256 values: a fine step
    assert sorted(lossy) == ["fc1.bias", "fc1.weight", "fc2.weight", "head.weight"]
    assert abs(8 * stored / n - bits) / bits < 0.08
    bias_err = np.linalg.norm(back["fc1.bias"] - model["fc1.bias"]) / np.linalg.norm(model["fc1.bias"])
    assert bias_err < 0.005
    assert back["steps"].tobytes() == model["steps"].tobytes()


def test_one_dimensional_tensors_can_stay_lossless():
    model = _model()
    buf = io.BytesIO()
    rdformat.save(model, buf, bits=3, fine=False)
    assert rdformat.load(buf.getvalue())["fc1.bias"].tobytes() == model["fc1.bias"].tobytes()
    short = {"w": model["fc1.weight"], "b": model["fc1.bias"][:63]}  # below FINE_MIN_ELEMENTS
    buf = io.BytesIO()
    rdformat.save(short, buf, bits=3)
    assert rdformat.load(buf.getvalue())["b"].tobytes() == short["b"].tobytes()


@pytest.mark.parametrize("target", [0.005, 0.03, 0.2])
def test_rate_control_rel_error_target(target):
    model = _model()
    buf = io.BytesIO()
    summary = rdformat.save(model, buf, rel_error=target)
    got = _rel_error(model, rdformat.load(buf.getvalue()))
    assert abs(got - target) / target < 0.08
    assert abs(summary["rel_l2_error"] - got) < 1e-9


def test_rate_control_size_target_is_a_ceiling(tmp_path):
    model = _model()
    path = tmp_path / "m.rdc"
    rdformat.save(model, path, size=30_000)
    assert 25_000 < path.stat().st_size <= 30_000


def test_sensitivity_shifts_error_to_insensitive_tensors():
    model = _model()
    plain = plan(model, bits=3)
    weighted = plan(model, bits=3, sensitivity={"head.weight": 100.0, "fc1.weight": 1.0, "fc2.weight": 1.0})
    assert weighted.steps["head.weight"] < plain.steps["head.weight"]
    assert weighted.steps["fc1.weight"] > plain.steps["fc1.weight"]
    assert weighted.steps["head.weight"] == pytest.approx(weighted.steps["fc1.weight"] / 10, rel=1e-6)


def test_structural_never_lossy_and_lossy_needs_mapping():
    model = _model()
    buf = io.BytesIO()
    rdformat.save(model, buf, bits=2, structural=["head.weight"])
    with rdformat.open(io.BytesIO(buf.getvalue())) as f:
        assert f.info("head.weight").codec == "bytesplit" and f.info("head.weight").structural
    with pytest.raises(InvalidInputError, match="mapping"):
        rdformat.save(iter(model.items()), io.BytesIO(), bits=2)
    with pytest.raises(InvalidInputError, match="structural"):
        rdformat.save(model, io.BytesIO(), bits=2, structural=["fc1.weight"], quantize=["fc1.weight"])
    with pytest.raises(InvalidInputError):
        rdformat.save(model, io.BytesIO(), bits=2, rel_error=0.1)
    with pytest.raises(InvalidInputError, match="target"):
        rdformat.save(model, io.BytesIO(), codec="sq")


@pytest.mark.skipif(not (SHARED_MODELS / "onet.pt").exists(), reason="MTCNN checkpoints not available")
def test_real_checkpoint_lossy_rate_and_error():
    torch = pytest.importorskip("torch")
    sd = {k: v.numpy() for k, v in torch.load(SHARED_MODELS / "onet.pt", weights_only=True).items()}
    buf = io.BytesIO()
    rdformat.save(sd, buf, rel_error=0.02)
    back = rdformat.load(buf.getvalue())
    assert abs(_rel_error(sd, back) - 0.02) < 0.002
    raw = sum(v.nbytes for v in sd.values())
    assert len(buf.getvalue()) < raw / 5  # float32 -> well under 6.4 bits/weight at 2% error


def test_broadcast_shaped_vectors_are_vectors() -> None:
    """A per-channel bias exported as 1xCx1x1 is a vector (fine step), not a matrix (coarse step)."""
    rng = np.random.default_rng(3)
    model = {"conv.weight": rng.laplace(0, 0.05, (32, 16, 3, 3)).astype(np.float32),
             "conv.bias": rng.normal(0, 0.1, (1, 128, 1, 1)).astype(np.float32)}
    buf = io.BytesIO()
    rdformat.save(model, buf, bits=2)
    out = rdformat.load(buf.getvalue())
    bias_err = np.linalg.norm(out["conv.bias"] - model["conv.bias"]) / np.linalg.norm(model["conv.bias"])
    weight_err = np.linalg.norm(out["conv.weight"] - model["conv.weight"]) / np.linalg.norm(model["conv.weight"])
    assert bias_err < 0.005 < weight_err  # the vector's fine step (~0.1%) vs the model's 2-bit step
    assert out["conv.bias"].shape == (1, 128, 1, 1)


@pytest.mark.parametrize("codec_id, config", [("sq", {"step": 10 ** 400}), ("dq", {"step": 0.5, "chain": 8,
                                                                                   "stats": {}, "x": 1}),
                                               ("dq", {"step": 10 ** 400, "chain": 8})])
def test_config_numbers_beyond_float_range_are_corrupt_data(codec_id, config) -> None:
    """JSON integers are unbounded: an enormous one is a CorruptDataError, never an OverflowError."""
    from rdformat.codecs import codec_from_config

    with pytest.raises(CorruptDataError):
        codec_from_config(codec_id, config)


@pytest.mark.parametrize("n, spread", [(50, 3000), (3000, 3000), (40, 30), (5000, 2)])
def test_dense_and_searched_lookups_decode_alike(n: int, spread: int) -> None:
    """A chunk decodes through a dense table (a row per possible group symbol) or by searching its table's
    symbols (a large alphabet, few symbols): on every backend the values are the normative dequantization."""
    from rdformat.codecs import sq
    from rdformat.entropy import ans

    rng = np.random.default_rng(n + spread)
    levels = np.clip(np.rint(rng.laplace(0, spread / 4, n)), -spread, spread).astype(np.int32)
    codec = SQCodec(0.01, 0.1, 0.2)
    f32 = by_numpy(np.dtype(np.float32))
    payload = codec.encode_chunk(levels, f32)
    k, radix, _table, _block, _pos = SQCodec.parse_payload(memoryview(payload), n)
    searched = not sq._dense(radix ** k, -(-n // k))
    assert searched == (spread == 3000 and n == 50)  # the cases cover both lookups
    expected = sq.dequantize(levels, 0.01, 0.1, 0.2, np.dtype(np.float32))
    for backend in ans.available_backends():
        with ans.use_backend(backend):
            np.testing.assert_array_equal(codec.decode_chunk(memoryview(payload), n, f32), expected)
            np.testing.assert_array_equal(codec.decode_levels(memoryview(payload), n), levels)


@pytest.mark.parametrize("scale, n", [(2, 20000), (6, 3000), (80, 3000)])
def test_finer_table_only_for_a_real_gain(monkeypatch, scale: float, n: int) -> None:
    """A level table with more lookup slots than a quarter of the chunk's symbols is chosen over a coarser
    one only if it codes the chunk ``FINE_TABLE_GAIN`` smaller (these chunks would take a finer table for
    under 0.3% fewer bytes); both choices decode to the same levels."""
    from rdformat.codecs import sq

    levels = np.round(np.random.default_rng(1).laplace(0, scale, n)).astype(np.int32)
    chosen = sq.choose_level_model(levels)
    monkeypatch.setattr(sq, "FINE_TABLE_GAIN", 0.0)
    finest = sq.choose_level_model(levels)
    assert chosen[4].precision < finest[4].precision
    assert (1 << finest[4].precision) > finest[3].size // 4
    assert finest[0] < chosen[0] <= finest[0] / (1 - 0.003)
    sizes = []
    for gain in (0.003, 0.0):
        monkeypatch.setattr(sq, "FINE_TABLE_GAIN", gain)
        data = sq.encode_levels(levels)
        sizes.append(len(data))
        for backend in ans.available_backends():
            with ans.use_backend(backend):
                assert np.array_equal(SQCodec(step=0.5).decode_levels(memoryview(data), n), levels)
    assert sizes[1] <= sizes[0] <= sizes[1] * 1.004 + 8
