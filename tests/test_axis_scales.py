"""Axis scales of sq/dq (format 1.4, spec 5.6) and the channel sensitivities that choose them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import rdformat
from rdformat.codecs.axis_scales import ROOTS, AxisScales, factor
from rdformat.codecs.base import Prepared
from rdformat.codecs.dq import DQCodec
from rdformat.codecs.sq import SQCodec
from rdformat.errors import CorruptDataError, InvalidInputError
from rdformat.producers import ratecontrol as RC
from rdformat.producers.channels import ChannelSensitivity, axis_scales
from rdformat.producers.sensitivity import estimate_channel_profiles, relative_output_error


def _laplace(shape, seed=0, scale=0.02):
    return np.random.default_rng(seed).laplace(0, scale, shape).astype(np.float32)


def test_factor_is_exact_on_powers_of_two_and_close_elsewhere():
    e = np.arange(-128, 129)
    f = factor(e)
    assert np.array_equal(f[e % 4 == 0], np.ldexp(1.0, (e[e % 4 == 0] // 4).astype(np.int32)))
    assert np.allclose(f, 2.0 ** (e / 4), rtol=2e-16, atol=0)
    assert ROOTS[2] == np.sqrt(2.0)


@pytest.mark.parametrize("method", ["sq", "dq"])
def test_round_trip_matches_the_producer_bit_for_bit(method):
    w = _laplace((48, 20, 3))
    scales = AxisScales(np.arange(48) % 7 - 3, (np.arange(20) % 5 - 2) * 4)
    done = RC.prepare_tensor(w, 0.004, method, scales=scales)
    buf = io.BytesIO()
    with rdformat.Writer(buf, max_minor=5) as writer:  # no 1.6 structure (TAIL): the minor shows the scales
        writer.add("w", done.prepared)
    data = buf.getvalue()
    assert data[8:12] == b"\x01\x00\x04\x00"  # minor 4: the file uses axis scales
    out = rdformat.load(data)["w"]
    levels = done.prepared.elements.reshape(w.shape)
    codec = done.prepared.codec
    plain = (SQCodec(codec.step, codec.offset1, codec.offset2) if method == "sq" else DQCodec(codec.step, codec.chain))
    unscaled = plain.decode_chunk(memoryview(plain.encode_chunk(levels.reshape(-1), _f32())), levels.size, _f32())
    expect = (unscaled.astype(np.float64).reshape(w.shape) * factor(scales.exponents(w.shape))).astype(np.float32)
    assert out.tobytes() == expect.tobytes()
    err = float(np.sum((out.astype(np.float64) - w) ** 2))
    assert err == pytest.approx(done.squared_error, rel=1e-9)


def _f32():
    from rdformat.format.dtypes import by_numpy

    return by_numpy(np.dtype("<f4"))


def test_files_without_scales_keep_their_minor_version():
    done = RC.prepare_tensor(_laplace((64, 64)), 0.004, "sq")
    buf = io.BytesIO()
    with rdformat.Writer(buf, pack_records=False, compact=False) as writer:  # 1.1 records only: the minor
        writer.add("w", done.prepared)                                       # would show scales alone
    assert buf.getvalue()[8:12] == b"\x01\x00\x01\x00"


@pytest.mark.parametrize("config, message", [
    ({"step": 0.5, "scale0": "!!!!"}, "base64"),
    ({"step": 0.5, "scale0": ""}, "non-empty"),
    ({"step": 0.5, "scale0": 7}, "base64 string"),
    ({"step": 0.5, "scale1": "gICA"}, "beyond"),  # -128
])
def test_bad_configurations_are_refused(config, message):
    with pytest.raises(CorruptDataError, match=message):
        SQCodec.from_config(config)


def test_scales_that_do_not_fit_the_shape_name_the_tensor():
    levels = np.arange(12, dtype=np.int32) % 5 - 2
    codec = SQCodec(0.5, scales=AxisScales(np.array([1, 2, 3])))
    buf = io.BytesIO()
    with rdformat.Writer(buf, pack_records=False) as writer:
        writer.add("bad", Prepared(codec, levels, np.dtype("<f4"), (4, 3)))
    with pytest.raises(CorruptDataError, match="3 exponents for axis 0 of length 4") as info:
        rdformat.load(buf.getvalue())
    assert info.value.tensor == "bad"


def test_scaled_tensors_are_never_packed():
    from rdformat.format import records as C

    levels = np.arange(12, dtype=np.int32) % 5 - 2
    buf = io.BytesIO()
    with rdformat.Writer(buf) as writer:  # small enough to be packed, were it not scaled
        writer.add("s", Prepared(SQCodec(0.5, scales=AxisScales(np.array([1, 0, -1, 2]))), levels, np.dtype("<f4"),
                                 (4, 3)))
        writer.add("b", np.ones(3, np.float32))
    with rdformat.open(buf.getvalue()) as f:
        kinds = {e.name: e.kind for e in f._load_index().values()}
        assert kinds["s"] == C.ENTRY_TENSOR
        assert f.get_tensor("s").shape == (4, 3)
    # (a PACK group whose configuration carries scales: conformance vector invalid/pack_axis_scales)


def test_channel_sensitivity_validation_and_json():
    cs = ChannelSensitivity(2.0, np.array([1.0, 3.0]), None)
    again = ChannelSensitivity.from_json(json.loads(json.dumps(cs.to_json())))
    assert float(again) == 2.0 and np.allclose(again.axis0, [1.0, 3.0]) and again.axis1 is None
    with pytest.raises(InvalidInputError):
        ChannelSensitivity(0.0)
    with pytest.raises(InvalidInputError):
        ChannelSensitivity(1.0, np.array([np.nan, 1.0]))
    with pytest.raises(InvalidInputError):
        ChannelSensitivity.from_json({"mean": 1.0, "axis2": [1]})


def test_axis_scales_follow_the_profile():
    profile = np.array([1.0, 16.0, 256.0, 1.0])
    scales, weight = axis_scales(ChannelSensitivity(1.0, profile), (4, 4096), strength=1.0)
    # step ~ S ** -1/2: 16x the sensitivity -> a quarter of the step -> exponent -8 relative
    assert list(np.diff(scales.e0.astype(int))[:2]) == [-8, -8]
    assert scales.e1 is None and weight > 0
    none, w = axis_scales(ChannelSensitivity(3.0, profile), (4, 4096), strength=0.0)
    assert not axis_scales(ChannelSensitivity(3.0, profile), (4, 8))[0]  # 8 weights per row: not worth 4 bytes
    assert not none and w == 3.0


def _fragile_model(gains):
    """y = diag(gains) @ (W @ x): output channel i of W is seen through gain i."""
    w = _laplace((len(gains), 24), seed=3, scale=0.1)
    x = np.random.default_rng(4).standard_normal((24, 64))

    def run(overrides):
        return [gains[:, None] * (np.asarray(overrides.get("w", w), np.float64) @ x)]

    return w, run


def test_channel_profiles_rank_the_fragile_row_first():
    gains = np.ones(12)
    gains[7] = 30.0
    w, run = _fragile_model(gains)
    profiles = estimate_channel_profiles({"w": w}, run, ["w"], seed=1)
    axis0, axis1 = profiles["w"]
    assert int(np.argmax(axis0)) == 7
    assert axis0[7] > 100 * np.median(axis0)
    assert axis1.max() < 10 * axis1.min()  # input channels are alike here


def test_channel_steps_lower_the_output_error_at_equal_size():
    gains = np.exp(np.linspace(0, np.log(50.0), 32))
    w = _laplace((32, 256), seed=5, scale=0.1)

    def run(overrides, w=w, x=np.random.default_rng(6).standard_normal((256, 32))):
        return [gains[:, None] * (np.asarray(overrides.get("w", w), np.float64) @ x)]

    ref = run({})
    profiles = estimate_channel_profiles({"w": w}, run, ["w"], seed=0)
    results = {}
    for label, sens in (("tensor", {"w": 1.0}), ("channels", {"w": ChannelSensitivity(1.0, *profiles["w"])})):
        buf = io.BytesIO()
        rdformat.save({"w": w}, buf, bits=3, sensitivity=sens)
        results[label] = (len(buf.getvalue()), relative_output_error(ref, run({"w": rdformat.load(buf.getvalue())["w"]})))
    (size_t, err_t), (size_c, err_c) = results["tensor"], results["channels"]
    assert size_c <= size_t * 1.05
    assert err_c < 0.8 * err_t


def test_torch_profiles_see_the_fragile_output():
    torch = pytest.importorskip("torch")
    from rdformat.torch_sensitivity import channel_profiles, output_sensitivity

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 8)
            gains = torch.ones(8)
            gains[2] = 40.0
            self.register_buffer("gains", gains)

        def forward(self, x):
            return self.fc(x) * self.gains

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(32, 16)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    axis0, _axis1 = channel_profiles(net, x, ["fc.weight"], probes=8)["fc.weight"]
    assert int(np.argmax(axis0)) == 2
    sens = output_sensitivity(net, x)
    assert isinstance(sens["fc.weight"], ChannelSensitivity) and int(np.argmax(sens["fc.weight"].axis0)) == 2
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_sensitivity_file_round_trip(tmp_path):
    from rdformat.calibrate import read_sensitivity_file, write_sensitivity_file

    sens = {"a": 1.5, "b": ChannelSensitivity(2.0, np.array([1.0, 2.0]), np.array([3.0, 1.0, 0.5]))}
    write_sensitivity_file(sens, tmp_path / "s.json")
    back = read_sensitivity_file(tmp_path / "s.json")
    assert back["a"] == 1.5 and isinstance(back["b"], ChannelSensitivity) and np.allclose(back["b"].axis1, [3, 1, 0.5])
    (tmp_path / "bad.json").write_text('{"b": {"mean": 1, "axis0": ["x"]}}')
    with pytest.raises(InvalidInputError, match="axis0"):
        read_sensitivity_file(tmp_path / "bad.json")
