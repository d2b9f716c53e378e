"""Robustness sweep: realistic PyTorch / safetensors / npz checkpoints through ``rdc`` and the adapters.

Builds a zoo of checkpoints as users find them (state_dicts of real architectures, training and
Lightning checkpoints, every dtype, odd layouts, legacy pickles, safetensors with metadata, npz
archives, hostile files) in a temporary folder and runs each one through

* ``rdc compress`` (lossless and ``--bits 4``), ``rdc info``, ``rdc decompress`` (in-process ``main``),
* the Python verbs (``rdformat.torch.save/load``, ``rdformat.safetensors.save/load``),

checking bit-exact lossless restores, structure-preserving lossy restores, untouched inputs, and that
every refusal is a one-line rdformat error (never an ``internal error`` or a raw traceback).

    PYTHONPATH=. python tools/sweep_checkpoints.py [--keep DIR] [--only SUBSTRING]

Exit code 0 when every case passes, 1 otherwise (each failure is listed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import os
import pickle
import sys
import tempfile
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import rdformat
from rdformat import torch as rt
from rdformat.cli import main as rdc_main
from rdformat.errors import RdcError


# ----------------------------------------------------------------------------------------------------
# Helpers


def _bits(t: torch.Tensor) -> bytes:
    return rt.to_numpy(t).tobytes()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(obj: Any) -> Any:
    """A deep copy of everything a caller handed us (tensors cloned with their bits)."""
    return copy.deepcopy(obj) if not isinstance(obj, torch.Tensor) else obj.detach().clone()


def compare(a: Any, b: Any, where: str = "") -> str | None:
    """None when ``a`` and ``b`` are bit-identical (tensors: dtype, shape, bytes; containers: keys, order,
    nesting; plain values: equality), else what differs first."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{where}: {type(a).__name__} vs {type(b).__name__}"
        if a.dtype != b.dtype:
            return f"{where}: dtype {a.dtype} vs {b.dtype}"
        if a.shape != b.shape:
            return f"{where}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        if _bits(a) != _bits(b):
            return f"{where}: values differ"
        return None
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return f"{where}: {type(a).__name__} vs {type(b).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        if np.ascontiguousarray(a).tobytes() != np.ascontiguousarray(b).tobytes():
            return f"{where}: values differ"
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if list(a) != list(b):
            return f"{where}: keys {list(a)[:8]} vs {list(b)[:8]}"
        for k in a:
            d = compare(a[k], b[k], f"{where}/{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = compare(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    if type(a) is not type(b) or a != b:
        if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
            return None
        return f"{where}: {a!r} vs {b!r}"
    return None


def run_cli(*argv: str) -> tuple[int, str]:
    """``rdc argv...`` in this process: (exit code, stderr)."""
    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = rdc_main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, err.getvalue() + out.getvalue()


# ----------------------------------------------------------------------------------------------------
# Models


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(ResBlock(16), ResBlock(16))
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.pw(self.dw(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(200, 32)
        self.rnn = nn.GRU(32, 32, batch_first=True)
        self.head = nn.Linear(32, 200, bias=False)
        self.head.weight = self.emb.weight  # tied output weight


def trained_resnet() -> SmallResNet:
    torch.manual_seed(0)
    m = SmallResNet()
    m.train()
    with torch.no_grad():
        for _ in range(3):  # real BN statistics, num_batches_tracked == 3
            m(torch.randn(4, 3, 8, 8))
    return m


def models() -> dict[str, nn.Module]:
    torch.manual_seed(1)
    out = {
        "resnet": trained_resnet(),
        "lstm": nn.LSTM(16, 32, num_layers=2, bidirectional=True),
        "gru": nn.GRU(16, 24, num_layers=1),
        "transformer": nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True),
            num_layers=2, enable_nested_tensor=False),
        "tied_lm": TiedLM(),
        "conv3d": nn.Sequential(nn.Conv3d(2, 8, 3), nn.BatchNorm3d(8), nn.Conv3d(8, 4, (1, 3, 3))),
        "layernorm_mlp": nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.GELU(), nn.Linear(128, 64)),
    }
    return out


def every_dtype() -> OrderedDict:
    g = torch.Generator().manual_seed(2)
    sd = OrderedDict()
    base = torch.randn(16, 24, generator=g)
    sd["f32"] = base.clone()
    sd["f16"] = base.half()
    sd["bf16"] = base.bfloat16()
    sd["f64"] = base.double()
    sd["f8e4"] = (base * 4).to(torch.float8_e4m3fn)
    sd["f8e5"] = (base * 4).to(torch.float8_e5m2)
    sd["i8"] = torch.randint(-128, 128, (32,), dtype=torch.int8, generator=g)
    sd["u8"] = torch.randint(0, 256, (32,), dtype=torch.uint8, generator=g)
    sd["i16"] = torch.randint(-(2**15), 2**15, (32,), dtype=torch.int16, generator=g)
    sd["i32"] = torch.randint(-(2**31), 2**31, (32,), dtype=torch.int32, generator=g)
    sd["i64"] = torch.tensor([-(2**63), 2**63 - 1, 0, 7])
    sd["bool"] = torch.rand(40, generator=g) > 0.5
    sd["scalar_f"] = torch.tensor(3.25)
    sd["scalar_i"] = torch.tensor(7)
    sd["scalar_bf16"] = torch.tensor(1.5, dtype=torch.bfloat16)
    sd["empty"] = torch.zeros(0)
    sd["empty_3x0"] = torch.zeros(3, 0)
    sd["empty_i64"] = torch.zeros(0, 5, dtype=torch.int64)
    sd["tall"] = torch.randn(50000, 2, generator=g)
    sd["nan_inf"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-45])
    return sd


def odd_layouts() -> OrderedDict:
    g = torch.Generator().manual_seed(3)
    big = torch.randn(32, 48, generator=g)
    sd = OrderedDict()
    sd["transposed"] = big.t()
    sd["slice_rows"] = big[4:12]              # contiguous view at an offset
    sd["slice_cols"] = big[:, 5:17]           # strided, not dense
    sd["step"] = big[::2, ::3]                # strided, not dense
    sd["expanded"] = torch.randn(1, 16, generator=g).expand(8, 16)  # stride 0
    sd["channels_last"] = torch.randn(4, 3, 5, 5, generator=g).to(memory_format=torch.channels_last)
    shared = torch.randn(100, generator=g)
    sd["share_a"] = shared[:50].view(5, 10)   # two tensors on one storage, different offsets
    sd["share_b"] = shared[50:].view(10, 5)
    sd["param"] = nn.Parameter(torch.randn(8, 8, generator=g))
    sd["grad"] = torch.randn(8, 8, generator=g).requires_grad_(True)
    sd["neg_view"] = torch.randn(6, generator=g).neg()  # plain
    sd["conj_c"] = torch.randn(8, 8, generator=g)
    return sd


def training_checkpoint() -> dict:
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(5, 8)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    return {"model": m.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": 3, "step": 10, "lr": 0.1, "best": None,
            "config": {"arch": "mlp", "widths": [8, 16, 4], "dropout": 0.0, "tags": ("a", "b"), "seed": None}}


def lightning_checkpoint() -> dict:
    torch.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4) if False else nn.Linear(8, 4))
    sd = OrderedDict(("model." + k, v) for k, v in m.state_dict().items())
    return {"epoch": 7, "global_step": 1234, "pytorch-lightning_version": "2.4.0",
            "state_dict": sd, "loops": {"fit_loop": {"epoch_progress": {"current": {"ready": 8}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}],
            "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 0.01, "layers": [3, 8], "name": "net"}}


# ----------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    name: str
    path: Path
    fmt: str                                    # "pytorch" | "safetensors" | "npz"
    expected: Any = None                        # what a lossless restore must give (state_dict / arrays)
    api_input: Any = None                       # what the Python verbs get (None: skip)
    refuse: bool = False                        # compress must fail with a clear rdformat error
    refuse_reason: str = ""
    st_meta: dict | None = None                 # safetensors __metadata__ expected back
    say: str = ""                               # what the lossless compress must print (a warning...)


@dataclass
class Result:
    case: str
    step: str
    ok: bool
    detail: str = ""


def build_cases(root: Path) -> list[Case]:
    cases: list[Case] = []

    def pt(name: str, obj: Any, expected: Any, *, suffix: str = ".pt", legacy: bool = False, api: Any = None) -> None:
        path = root / f"{name}{suffix}"
        if legacy:
            torch.save(obj, path, _use_new_zipfile_serialization=False)
        else:
            torch.save(obj, path)
        cases.append(Case(name, path, "pytorch", expected=expected, api_input=api))

    for name, m in models().items():
        sd = m.state_dict()
        pt(f"sd_{name}", sd, sd, api=sd)
    sd = models()["resnet"].state_dict()
    pt("sd_resnet_legacy", sd, sd, legacy=True)
    pt("sd_resnet_pth", sd, sd, suffix=".pth")
    pt("sd_resnet_bin", sd, sd, suffix=".bin")
    pt("sd_resnet_bin_legacy", sd, sd, suffix=".bin", legacy=True)
    pt("sd_resnet_ckpt", sd, sd, suffix=".ckpt")
    tied = models()["tied_lm"].state_dict()
    pt("sd_tied_legacy", tied, tied, legacy=True)

    dt = every_dtype()
    pt("dtypes", dt, dt, api=dt)
    no_f8 = OrderedDict((k, v) for k, v in dt.items() if not k.startswith("f8"))
    pt("dtypes_legacy", no_f8, no_f8, legacy=True)
    # torch 2.13 itself cannot read float8 from a legacy pickle: a clear rdformat error is all we can give
    pt("float8_legacy", {"f8": dt["f8e4"]}, None, legacy=True)
    cases[-1].refuse, cases[-1].refuse_reason = True, "not a readable PyTorch checkpoint"
    lay = odd_layouts()
    pt("layouts", lay, lay, api=lay)
    pt("layouts_legacy", lay, lay, legacy=True)
    pt("complex64", {"w": torch.randn(4, 4), "c": torch.randn(4, 4, dtype=torch.complex64)}, None,
       api={"w": torch.randn(4, 4), "c": torch.randn(4, 4, dtype=torch.complex64)})
    cases[-1].refuse, cases[-1].refuse_reason = True, "'c'"

    tc = training_checkpoint()
    pt("train_ckpt", tc, tc["model"])
    cases[-1].say = "other entries are not: 'optimizer'"
    pt("train_ckpt_legacy", tc, tc["model"], legacy=True)
    cases[-1].say = "other entries are not: 'optimizer'"
    lc = lightning_checkpoint()
    pt("lightning", lc, lc["state_dict"])
    cases[-1].say = "'optimizer_states'"
    flat = OrderedDict([("w", torch.ones(3, 3)), ("epoch", 3), ("arch", "mlp"), ("lr", 0.5), ("none", None)])
    pt("flat_scalars", flat, flat, api=flat)
    # non-tensor entries JSON would change (tuple -> list, int keys -> str): exact or refused, never altered
    odd_extra = OrderedDict([("w", torch.ones(2)), ("cfg._extra_state", (1, 2)), ("x._extra_state", {1: "a"})])
    pt("extra_state_tuple_intkeys", odd_extra, None, api=odd_extra)
    cases[-1].refuse, cases[-1].refuse_reason = True, "'cfg._extra_state'"
    nan_flat = OrderedDict([("w", torch.ones(2)), ("best_loss", float("nan"))])
    pt("flat_nan_scalar", nan_flat, None, api=nan_flat)
    cases[-1].refuse, cases[-1].refuse_reason = True, "'best_loss'"
    ok_extra = OrderedDict([("w", torch.ones(2)), ("cfg._extra_state", {"scale": [1.5, 2], "on": True, "n": None})])
    pt("extra_state_json", ok_extra, ok_extra, api=ok_extra)
    only_opt = {"optimizer": tc["optimizer"]}
    pt("only_optimizer", only_opt, None)
    cases[-1].refuse, cases[-1].refuse_reason = True, "state_dict"
    pt("single_tensor", torch.randn(3, 3), None)
    cases[-1].refuse, cases[-1].refuse_reason = True, "single tensor"
    pt("list_of_tensors", [torch.randn(3), torch.randn(4)], None)
    cases[-1].refuse, cases[-1].refuse_reason = True, "list"
    pt("empty_dict", {}, None)
    cases[-1].refuse, cases[-1].refuse_reason = True, "state_dict"
    half_model = models()["transformer"].half().state_dict()
    pt("sd_transformer_fp16", half_model, half_model, api=half_model)
    bf_model = models()["resnet"].to(torch.bfloat16).state_dict()
    pt("sd_resnet_bf16", bf_model, bf_model, api=bf_model)
    dp = OrderedDict(("module." + k, v) for k, v in models()["layernorm_mlp"].state_dict().items())
    pt("dataparallel_prefix", dp, dp)

    # hostile .pt
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo PWNED > " + str(root / "pwned"),))

    path = root / "evil.pt"
    torch.save({"w": torch.ones(2), "evil": Evil()}, path)
    cases.append(Case("evil_pickle", path, "pytorch", refuse=True, refuse_reason="refused"))
    path = root / "module_pickle.pt"
    torch.save(nn.Linear(2, 2), path)
    cases.append(Case("whole_module", path, "pytorch", refuse=True, refuse_reason="refused"))
    path = root / "raw_pickle.pkl.pt"
    path.write_bytes(pickle.dumps({"w": np.ones(3)}))
    cases.append(Case("raw_pickle_numpy", path, "pytorch", refuse=True, refuse_reason="refused"))
    good = (root / "sd_resnet.pt").read_bytes()
    for frac in (0.5, 0.9):
        path = root / f"trunc{int(frac * 100)}.pt"
        path.write_bytes(good[: int(len(good) * frac)])
        cases.append(Case(path.stem, path, "pytorch", refuse=True, refuse_reason=""))
    legacy = (root / "sd_resnet_legacy.pt").read_bytes()
    path = root / "trunc_legacy.pt"
    path.write_bytes(legacy[: len(legacy) // 2])
    cases.append(Case("trunc_legacy", path, "pytorch", refuse=True))
    path = root / "deflate_bomb.pt"  # data.pkl deflated: ~70 KB that torch.load would inflate to 72 MB
    import zipfile
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
            for _ in range(72):
                fh.write(bytes(1 << 20))
    cases.append(Case("deflate_bomb", path, "pytorch", refuse=True, refuse_reason="unpack to"))
    path = root / "empty_file.pt"
    path.write_bytes(b"")
    cases.append(Case("empty_file", path, "pytorch", refuse=True))

    # safetensors
    import ml_dtypes
    from safetensors.numpy import save_file as st_save_np
    from safetensors.torch import save_file as st_save_torch

    g = np.random.default_rng(6)
    arrays = OrderedDict()
    arrays["F32"] = g.standard_normal((16, 24)).astype(np.float32)
    arrays["F16"] = arrays["F32"].astype(np.float16)
    arrays["BF16"] = arrays["F32"].astype(ml_dtypes.bfloat16)
    arrays["F64"] = arrays["F32"].astype(np.float64)
    arrays["F8_E4M3"] = arrays["F32"].astype(ml_dtypes.float8_e4m3fn)
    arrays["F8_E5M2"] = arrays["F32"].astype(ml_dtypes.float8_e5m2)
    for t in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
        info = np.iinfo(t)
        arrays[t] = g.integers(info.min, info.max, 33, dtype=t, endpoint=True)
    arrays["BOOL"] = g.random(17) > 0.5
    arrays["zero_size"] = np.zeros((0, 8), np.float32)
    arrays["zero_size_1d"] = np.zeros(0, np.int64)
    arrays["scalar"] = np.array(2.5, np.float32)
    meta = {"format": "pt", "author": "zoo", "unicode": "ünï"}
    path = root / "all_dtypes.safetensors"
    st_save_np(dict(arrays), str(path), metadata=meta)
    cases.append(Case("st_all_dtypes", path, "safetensors", expected=arrays, api_input=arrays, st_meta=meta))
    tsd = models()["transformer"].state_dict()
    path = root / "transformer.safetensors"
    st_save_torch({k: v.contiguous() for k, v in tsd.items()}, str(path), metadata={"format": "pt"})
    cases.append(Case("st_transformer", path, "safetensors",
                      expected={k: rt.to_numpy(v) for k, v in tsd.items()}, st_meta={"format": "pt"}))
    path = root / "nometa.safetensors"
    st_save_np({"a": np.ones((3, 3), np.float32)}, str(path))
    cases.append(Case("st_no_metadata", path, "safetensors", expected={"a": np.ones((3, 3), np.float32)}))
    path = root / "bf16_model.safetensors"
    st_save_torch({k: v.contiguous() for k, v in bf_model.items()}, str(path))
    cases.append(Case("st_bf16_model", path, "safetensors", expected={k: rt.to_numpy(v) for k, v in bf_model.items()}))

    blob = (root / "all_dtypes.safetensors").read_bytes()
    path = root / "trunc.safetensors"
    path.write_bytes(blob[: len(blob) - 100])
    cases.append(Case("st_truncated", path, "safetensors", refuse=True, refuse_reason=""))
    path = root / "trunc_header.safetensors"
    path.write_bytes(blob[:40])
    cases.append(Case("st_truncated_header", path, "safetensors", refuse=True))
    import json
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}).encode()
    path = root / "huge_offsets.safetensors"
    path.write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"\0" * 16)
    cases.append(Case("st_huge_offsets", path, "safetensors", refuse=True))
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [2**64, 2**64 + 8]}}).encode()
    path = root / "huge_offsets2.safetensors"
    path.write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"\0" * 16)
    cases.append(Case("st_offsets_2_64", path, "safetensors", refuse=True))
    path = root / "huge_hlen.safetensors"
    path.write_bytes((2**63).to_bytes(8, "little") + b"{}")
    cases.append(Case("st_huge_header_len", path, "safetensors", refuse=True))
    hdr = json.dumps({"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}).encode()
    path = root / "complex.safetensors"
    path.write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"\0" * 16)
    cases.append(Case("st_complex_dtype", path, "safetensors", refuse=True, refuse_reason="'w'"))
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode()
    path = root / "negdim.safetensors"
    path.write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"\0" * 4)
    cases.append(Case("st_negative_dim", path, "safetensors", refuse=True))
    hdr = json.dumps({"__metadata__": {"format": 1}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = root / "badmeta.safetensors"
    path.write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"\0" * 4)
    cases.append(Case("st_nonstring_metadata", path, "safetensors", refuse=True))

    # npz
    plain = OrderedDict(w=g.standard_normal((32, 16)).astype(np.float32), b=np.zeros(16, np.float32),
                        idx=np.arange(10, dtype=np.int64), f16=g.standard_normal((8, 8)).astype(np.float16),
                        flag=np.array([True, False]), empty=np.zeros((3, 0), np.float32),
                        fortran=np.asfortranarray(g.standard_normal((6, 5)).astype(np.float32)),
                        scalar=np.array(1.5))
    path = root / "plain.npz"
    np.savez(path, **plain)
    cases.append(Case("npz_plain", path, "npz", expected=plain))
    path = root / "plain_compressed.npz"
    np.savez_compressed(path, **plain)
    cases.append(Case("npz_compressed", path, "npz", expected=plain))
    path = root / "object.npz"
    np.savez(path, w=np.ones(3), o=np.array([{"a": 1}, None], dtype=object))
    cases.append(Case("npz_object", path, "npz", refuse=True, refuse_reason="refused"))
    path = root / "complex.npz"
    np.savez(path, c=np.ones(3, np.complex64))
    cases.append(Case("npz_complex", path, "npz", refuse=True, refuse_reason="'c'"))
    path = root / "bigendian.npz"
    np.savez(path, w=np.arange(6, dtype=">f4").reshape(2, 3))
    cases.append(Case("npz_bigendian", path, "npz", expected={"w": np.arange(6, dtype="<f4").reshape(2, 3)}))
    path = root / "strings.npz"
    np.savez(path, s=np.array(["a", "bc"]))
    cases.append(Case("npz_unicode_array", path, "npz", refuse=True, refuse_reason="'s'"))
    return cases


# ----------------------------------------------------------------------------------------------------
# Checks


def _load_output(path: Path, fmt: str) -> Any:
    if fmt == "pytorch":
        return torch.load(path, weights_only=True)
    if fmt == "safetensors":
        # the reference library's numpy loader has no float8: read through its torch loader
        from safetensors.torch import load_file

        return {k: rt.to_numpy(v) for k, v in load_file(str(path)).items()}
    # bfloat16/float8 travel as tagged bit patterns in .npz (np.load would give the uint carriers)
    from rdformat.npz import iter_npz

    return dict(iter_npz(path))


def _st_meta(path: Path) -> dict | None:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return f.metadata()


def _as_numpy_map(expected: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: rt.to_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in expected.items()
            if isinstance(v, (torch.Tensor, np.ndarray))}


def _tensor_map(expected: Mapping[str, Any]) -> dict:
    return {k: v for k, v in expected.items() if isinstance(v, (torch.Tensor, np.ndarray))}


def _layout_and_ties(expected: Mapping[str, Any], got: Mapping[str, Any]) -> str | None:
    """Dense non-contiguous layouts keep their strides; tensors tied in the input stay tied."""
    seen: dict[Any, str] = {}
    for k, v in expected.items():
        if not isinstance(v, torch.Tensor):
            continue
        if rt._dense_strides(v) is not None and got[k].stride() != v.stride():
            return f"{k}: dense strides {v.stride()} restored as {got[k].stride()}"
        key = rt._storage_key(v)
        if key is None:
            continue
        if key in seen and got[k].untyped_storage().data_ptr() != got[seen[key]].untyped_storage().data_ptr():
            return f"{k}: tied to {seen[key]!r} in the input, a separate copy after restore"
        seen.setdefault(key, k)
    return None


def _lossy_check(expected: Mapping[str, Any], got: Mapping[str, Any], ordered: bool = True) -> str | None:
    exp = _tensor_map(expected)
    gotm = _tensor_map(got)
    if not ordered:
        exp, gotm = dict(sorted(exp.items())), dict(sorted(gotm.items()))  # safetensors: file order
    if list(exp) != list(gotm):
        return f"keys {list(exp)[:6]} vs {list(gotm)[:6]}"
    for k, a in exp.items():
        b = gotm[k]
        a_np = rt.to_numpy(a) if isinstance(a, torch.Tensor) else np.asarray(a)
        b_np = rt.to_numpy(b) if isinstance(b, torch.Tensor) else np.asarray(b)
        if a_np.dtype != b_np.dtype or a_np.shape != b_np.shape:
            return f"{k}: {a_np.dtype}{a_np.shape} vs {b_np.dtype}{b_np.shape}"
        if a_np.dtype.kind in "biu" or "num_batches_tracked" in k:
            if a_np.tobytes() != b_np.tobytes():
                return f"{k}: integer/bool tensor changed by lossy mode"
            continue
        x = a_np.astype(np.float64)
        y = b_np.astype(np.float64)
        fin = np.isfinite(x)
        if not np.array_equal(fin, np.isfinite(y)):
            return f"{k}: finiteness changed"
        x, y = x[fin], y[fin]
        norm = np.linalg.norm(x)
        if norm > 0 and np.linalg.norm(x - y) / norm > 0.25:
            return f"{k}: relative error {np.linalg.norm(x - y) / norm:.3f}"
    return None


def check_case(case: Case, work: Path) -> list[Result]:
    res: list[Result] = []

    def record(step: str, fn: Callable[[], str | None]) -> None:
        try:
            problem = fn()
        except RdcError as exc:
            res.append(Result(case.name, step, False, f"rdformat error where success was expected: "
                                                      f"{type(exc).__name__}: {exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - a raw exception is a bug
            res.append(Result(case.name, step, False, f"RAW {type(exc).__name__}: {exc}\n"
                                                      + traceback.format_exc(limit=6)))
            return
        res.append(Result(case.name, step, problem is None, problem or ""))

    before = _digest(case.path)
    rdc = work / f"{case.name}.rdc"
    for old in work.glob(f"{case.name}.*"):  # a kept folder: no output of an earlier run counts
        old.unlink()
    if case.refuse:
        def refused() -> str | None:
            code, err = run_cli("compress", case.path, rdc)
            if code == 0:
                return "compress succeeded where a refusal was expected"
            if "internal error" in err or "Traceback" in err:
                return f"unclear error: {err.strip()}"
            if case.refuse_reason and case.refuse_reason not in err:
                return f"error does not mention {case.refuse_reason!r}: {err.strip()}"
            if rdc.exists():
                return "a refused compress left an output file"
            leftovers = [p.name for p in work.iterdir() if p.name.startswith(rdc.name) or ".tmp" in p.name]
            if leftovers:
                return f"temporaries left behind: {leftovers}"
            return None

        record("cli-refuse", refused)
        if case.api_input is not None:
            def api_refused() -> str | None:
                try:
                    rt.save(case.api_input)
                except RdcError as exc:
                    if case.refuse_reason and case.refuse_reason not in str(exc):
                        return f"API error does not name {case.refuse_reason!r}: {exc}"
                    return None
                return "API save succeeded where a refusal was expected"

            record("api-refuse", api_refused)
        if (case.path.parent / "pwned").exists():
            res.append(Result(case.name, "no-code-run", False, "the pickle's code ran"))
        return res

    # lossless CLI round trip
    def lossless() -> str | None:
        code, err = run_cli("compress", case.path, rdc)
        if code:
            return f"compress failed: {err.strip()}"
        if case.say not in err:
            return f"compress did not say {case.say!r}: {err.strip()}"
        code, err = run_cli("info", rdc)
        if code:
            return f"info failed: {err.strip()}"
        code, err = run_cli("info", "--json", rdc)
        if code:
            return f"info --json failed: {err.strip()}"
        code, err = run_cli("verify", rdc)
        if code:
            return f"verify failed: {err.strip()}"
        suffix = {"pytorch": case.path.suffix if case.path.suffix in (".pt", ".pth") else ".pt",
                  "safetensors": ".safetensors", "npz": ".npz"}[case.fmt]
        back = work / f"{case.name}.back{suffix}"
        code, err = run_cli("decompress", rdc, back)
        if code:
            return f"decompress failed: {err.strip()}"
        got = _load_output(back, case.fmt)
        diff = compare(case.expected if case.fmt != "safetensors" else dict(case.expected), got if case.fmt != "safetensors" else {k: got[k] for k in case.expected})
        if case.fmt == "safetensors" and list(got) != list(case.expected) and sorted(got) != sorted(case.expected):
            return f"names {sorted(got)} vs {sorted(case.expected)}"
        if diff:
            return f"lossless restore differs: {diff}"
        if case.fmt == "pytorch":
            problem = _layout_and_ties(case.expected, got)
            if problem:
                return problem
        if case.fmt == "pytorch" and getattr(case.expected, "_metadata", None) is not None:
            if list(getattr(got, "_metadata", {}).items()) != list(case.expected._metadata.items()):
                return "state_dict._metadata not restored"
        if case.fmt == "safetensors":
            meta = _st_meta(back)
            if meta != case.st_meta:
                return f"__metadata__ {meta} vs {case.st_meta}"
        return None

    record("cli-lossless", lossless)

    # cross-format restore: every source decodes to .safetensors and .npz with the same tensors
    def cross() -> str | None:
        if not rdc.exists():
            return "no .rdc"
        exp = _as_numpy_map(case.expected)
        for suffix in (".safetensors", ".npz", ".pt"):
            back = work / f"{case.name}.cross{suffix}"
            code, err = run_cli("decompress", rdc, back)
            if code:
                return f"decompress to {suffix} failed: {err.strip()}"
            got = _load_output(back, {".safetensors": "safetensors", ".npz": "npz", ".pt": "pytorch"}[suffix])
            got = _as_numpy_map(got)
            for k, v in exp.items():
                if k not in got:
                    return f"{suffix}: {k!r} missing"
                d = compare(v, got[k], f"{suffix}:{k}")
                if d:
                    return d
        return None

    record("cli-cross-format", cross)

    # lossy CLI round trip
    def lossy() -> str | None:
        out = work / f"{case.name}.b4.rdc"
        code, err = run_cli("compress", case.path, out, "--bits", "4")
        if code:
            return f"compress --bits 4 failed: {err.strip()}"
        code, err = run_cli("info", out)
        if code:
            return f"info failed: {err.strip()}"
        suffix = {"pytorch": ".pt", "safetensors": ".safetensors", "npz": ".npz"}[case.fmt]
        back = work / f"{case.name}.b4.back{suffix}"
        code, err = run_cli("decompress", out, back)
        if code:
            return f"decompress failed: {err.strip()}"
        got = _load_output(back, case.fmt)
        if case.fmt == "pytorch":
            extras_exp = {k: v for k, v in case.expected.items() if not isinstance(v, torch.Tensor)}
            extras_got = {k: v for k, v in got.items() if not isinstance(v, torch.Tensor)}
            d = compare(extras_exp, extras_got, "extras")
            if d:
                return d
            if list(case.expected) != list(got):
                return f"key order {list(case.expected)[:6]} vs {list(got)[:6]}"
        return _lossy_check(case.expected, got, ordered=case.fmt != "safetensors")

    record("cli-bits4", lossy)

    if case.path.exists() and _digest(case.path) != before:
        res.append(Result(case.name, "input-untouched", False, "the input file changed"))

    if case.api_input is not None:
        snap = {k: _snapshot(v) for k, v in case.api_input.items()}
        strides = {k: v.stride() for k, v in case.api_input.items() if isinstance(v, torch.Tensor)}

        def api() -> str | None:
            if case.fmt == "pytorch":
                data = rt.save(case.api_input)
                back = rt.load(data)
                d = compare(dict(case.api_input), dict(back))
                if d:
                    return f"rdformat.torch save/load differs: {d}"
                for k, v in case.api_input.items():
                    if isinstance(v, torch.Tensor) and v.is_contiguous() is False and \
                            rt._dense_strides(v) is not None and back[k].stride() != v.stride():
                        return f"{k}: dense strides {v.stride()} restored as {back[k].stride()}"
                p = work / f"{case.name}.api.rdc"
                rt.save_file(case.api_input, p)
                back = rt.load_file(p)
                d = compare(dict(case.api_input), dict(back))
                if d:
                    return f"save_file/load_file differs: {d}"
                lossy_back = rt.load(rt.save(case.api_input, lossy=rdformat.Lossy(bits=4)))
                d = _lossy_check(case.api_input, lossy_back)
                if d:
                    return f"lossy API: {d}"
            else:
                import rdformat.safetensors as rs

                data = rs.save(case.api_input, metadata=case.st_meta)
                back = rs.load(data)
                d = compare(dict(case.api_input), back)
                if d:
                    return f"rdformat.safetensors save/load differs: {d}"
                lossy_back = rs.load(rs.save(case.api_input, lossy={"bits": 4}))
                d = _lossy_check(case.api_input, lossy_back)
                if d:
                    return f"lossy API: {d}"
            return None

        record("api", api)

        def untouched() -> str | None:
            for k, v in case.api_input.items():
                d = compare(snap[k], v, k)
                if d:
                    return f"caller's tensor changed: {d}"
                if isinstance(v, torch.Tensor) and strides[k] != v.stride():
                    return f"{k}: caller's strides changed"
            return None

        record("api-caller-untouched", untouched)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build the zoo in this folder (kept afterwards)")
    parser.add_argument("--only", help="run only cases whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        (root / "zoo").mkdir(parents=True, exist_ok=True)
        (root / "work").mkdir(parents=True, exist_ok=True)
        cases = build_cases(root / "zoo")
        results: list[Result] = []
        for case in cases:
            if args.only and args.only not in case.name:
                continue
            rs = check_case(case, root / "work")
            bad = [r for r in rs if not r.ok]
            print(f"{'FAIL' if bad else 'ok  '} {case.name:28s} " + " ".join(
                f"{r.step}:{'ok' if r.ok else 'FAIL'}" for r in rs), flush=True)
            results += rs
    failures = [r for r in results if not r.ok]
    n_cases = len({r.case for r in results})
    n_bad = len({r.case for r in failures})
    print(f"\n{n_cases} cases, {len(results)} checks: {n_cases - n_bad} cases ok, {n_bad} failing")
    for r in failures:
        print(f"\n--- {r.case} [{r.step}]\n{r.detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
