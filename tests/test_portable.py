"""Portable decoding (issues 7, 13): files decode the same with and without the accelerators, now and later.

* every codec's output decodes to identical arrays through the numpy, numba and constriction ANS paths;
* the decoding test suites (hostile files included) pass in a process where ``import constriction`` and
  ``import numba`` fail (as where they have no wheel), and rdformat then really decodes with numpy;
* the golden files in spec/vectors/golden/ (written once, never regenerated) keep decoding to the
  same bytes on every backend.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdformat
from rdformat.entropy import ans

from helpers import ALL_DTYPES, random_array

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "spec" / "vectors" / "golden"
HAVE_CS = "constriction" in ans.available_backends()
HAVE_NUMBA = "numba" in ans.available_backends()
#: every usable backend, the numpy reference first, and "auto" (it mixes paths by block size, and must not
#: change results either)
BACKENDS = ["numpy"] + [b for b in ans.available_backends() if b != "numpy"] + ["auto"]
#: what a subprocess needs to see only the numpy path: both accelerators made unimportable
BLOCK_ALL = {"RDFORMAT_BLOCK_CONSTRICTION": "1", "RDFORMAT_BLOCK_NUMBA": "1"}
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])


def decode_with(data: bytes, backend: str) -> dict[str, np.ndarray]:
    with ans.use_backend(backend):
        return rdformat.load(data)


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    for var in ("RDFORMAT_NO_CONSTRICTION", "RDFORMAT_BLOCK_CONSTRICTION", "RDFORMAT_BACKEND_REPORT",
                "RDFORMAT_NO_NUMBA", "RDFORMAT_BLOCK_NUMBA"):
        if var not in extra:
            env.pop(var, None)
    return env


# ----------------------------------------------------------------------------------------------
# (a) both backends decode every codec's output identically
# ----------------------------------------------------------------------------------------------


@SLOW
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(ALL_DTYPES),
       shape=st.sampled_from([(0,), (1,), (7,), (300,), (64, 65), (3, 50, 41), (20000,), (70000,)]),
       chunk_bytes=st.sampled_from([97, 4096, 50_000, 4 << 20]), special=st.booleans())
def test_bytesplit_decodes_identically_on_every_backend(seed, dtype, shape, chunk_bytes, special):
    rng = np.random.default_rng(seed)
    x = random_array(rng, np.dtype(dtype), shape, special=special)
    if x.dtype.kind in "iu" and x.size and seed % 2:  # small integers: skewed byte planes, ANS-coded
        x = np.clip(rng.laplace(0, 3, size=shape), -100, 100).astype(dtype)
    buf = io.BytesIO()
    rdformat.save({"x": x}, buf, chunk_bytes=chunk_bytes)
    results = {be: decode_with(buf.getvalue(), be) for be in BACKENDS}
    assert results["numpy"]["x"].tobytes() == x.tobytes()
    for be in BACKENDS[1:]:
        assert_same(results["numpy"], results[be])


@SLOW
@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([0.5, 1.0, 2.5, 4.0, 6.0, 9.0]),
       dtype=st.sampled_from([np.float32, ml_dtypes.bfloat16, np.float16]),
       shapes=st.tuples(st.sampled_from([(16, 16), (64, 3, 3, 3), (300, 200), (96, 1000)]),
                        st.lists(st.sampled_from([(16, 16), (64, 3, 3, 3), (300, 200), (50,)]), max_size=3)),
       chunk_bytes=st.sampled_from([4096, 100_000, 4 << 20]), method=st.sampled_from(["sq", "dq"]))
def test_lossy_decodes_identically_on_every_backend(seed, bits, dtype, shapes, chunk_bytes, method):
    rng = np.random.default_rng(seed)
    shapes = [shapes[0], *shapes[1]]  # t0 is >= 2-D: at least one tensor is quantized
    tensors = {f"t{i}": rng.laplace(0, 0.05, size=s).astype(dtype) for i, s in enumerate(shapes)}
    tensors["t0"].reshape(-1)[: tensors["t0"].size // 3] = 0  # a pruned part: lanes without words
    buf = io.BytesIO()
    rdformat.save(tensors, buf, bits=bits, chunk_bytes=chunk_bytes, method=method)
    data = buf.getvalue()
    with rdformat.open(data) as f:
        assert any(f.info(k).codec == method for k in f.keys())
    results = {be: decode_with(data, be) for be in BACKENDS}
    for be in BACKENDS[1:]:
        assert_same(results["numpy"], results[be])


def _mixed_model(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.laplace(0, 0.1, size=(32, 16, 3, 3)).astype(np.float32),
        "fc.weight": rng.laplace(0, 0.03, size=(400, 700)).astype(np.float32),
        "fc.bias": rng.laplace(0, 0.01, size=400).astype(np.float32),
        "emb": rng.laplace(0, 0.02, size=(512, 96)).astype(ml_dtypes.bfloat16),
        "ids": rng.integers(-5, 5, size=3000).astype(np.int32),
    }


def test_env_var_forces_numpy_in_a_subprocess(tmp_path):
    """RDFORMAT_NO_CONSTRICTION=1 RDFORMAT_NO_NUMBA=1 in a fresh process: same arrays as this process decodes."""
    files = {}
    for name, kwargs in (("lossless", {}), ("sq", {"bits": 3.0}), ("sq_small_chunks", {"bits": 5.0,
                                                                                           "chunk_bytes": 20_000})):
        buf = io.BytesIO()
        rdformat.save(_mixed_model(), buf, **kwargs)
        files[name] = buf.getvalue()
        (tmp_path / f"{name}.rdc").write_bytes(files[name])
    code = f"""
import sys, numpy as np, rdformat
from rdformat.entropy import ans
assert ans.available_backends() == ['numpy'], ans.available_backends()
for name in {sorted(files)!r}:
    t = rdformat.load({str(tmp_path)!r} + '/' + name + '.rdc')
    np.savez({str(tmp_path)!r} + '/' + name + '.npz', **{{k: v.view(np.uint8) for k, v in t.items()}})
print('OK')
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=subprocess_env(RDFORMAT_NO_CONSTRICTION="1", RDFORMAT_NO_NUMBA="1"))
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stderr
    for name, data in files.items():
        here = decode_with(data, "auto")
        with np.load(tmp_path / f"{name}.npz") as z:
            assert sorted(z.files) == sorted(here)
            for k, v in here.items():
                assert z[k].tobytes() == v.view(np.uint8).tobytes(), (name, k)


# ----------------------------------------------------------------------------------------------
# (b) the decoding suites pass where constriction cannot be imported
# ----------------------------------------------------------------------------------------------


def test_import_blocker_makes_constriction_unimportable(tmp_path):
    code = """
import rdformat  # conftest-style blocker installed by tests/conftest.py through the env var
from rdformat.entropy import ans
try:
    import constriction
    raise SystemExit('constriction imported')
except ImportError:
    pass
try:
    import numba
    raise SystemExit('numba imported')
except ImportError:
    pass
assert ans.available_backends() == ['numpy'], ans.available_backends()
print('OK')
"""
    # the blocker lives in tests/conftest.py; import it the way pytest would, then run the check
    wrapper = f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import conftest\n" + code
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120,
                         env=subprocess_env(**BLOCK_ALL))
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stdout + res.stderr


def test_decoding_suites_pass_without_constriction(tmp_path):
    """tests/test_container.py, test_spec_layout.py, the vectors, golden and hostile-file tests, with
    constriction and numba blocked (the numpy reference path only, as where neither has a wheel)."""
    targets = ["tests/test_container.py", "tests/test_spec_layout.py", "tests/test_hostile.py",
               "tests/test_portable.py::test_golden_files_decode_to_the_stored_arrays"]
    deselect = []
    if (REPO / "tests" / "test_vectors.py").exists():
        targets.append("tests/test_vectors.py")
        # these two check what the *writer* produces today and the manifest's file list: not decoding tests
        deselect = ["--deselect", "tests/test_vectors.py::test_regeneration_is_byte_identical",
                    "--deselect", "tests/test_vectors.py::test_manifest_covers_the_brief"]
    report = tmp_path / "report.json"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", *targets, *deselect, "-q", "-x", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env=subprocess_env(**BLOCK_ALL, RDFORMAT_BACKEND_REPORT=str(report)),
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    info = json.loads(report.read_text())
    assert info["blocked"] and info["numba_blocked"] and info["exitstatus"] == 0
    assert info["available_backends"] == ["numpy"], info
    assert not info["constriction_loaded"] and not info["numba_loaded"], info
    assert "constriction not usable" in info["reason"], info
    assert info["numpy_blocks_decoded"] > 10, info  # ANS blocks really went through the numpy decoder


# ----------------------------------------------------------------------------------------------
# (c) golden files written once keep decoding to the same bytes
# ----------------------------------------------------------------------------------------------


def _manifest() -> dict:
    return json.loads((GOLDEN / "manifest.json").read_text())


def _expected(entry: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, t in entry["tensors"].items():
        path = GOLDEN / t["npy"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == t["sha256"], f"{path} was modified"
        raw = np.load(path, allow_pickle=False)
        dtype = np.dtype(getattr(ml_dtypes, t["dtype"])) if t.get("stored_as") else np.dtype(t["dtype"])
        a = raw.view(dtype) if t.get("stored_as") else raw
        assert a.dtype == dtype and list(a.shape) == t["shape"]
        out[name] = a
    return out


def test_golden_files_are_unchanged():
    manifest = _manifest()
    assert set(manifest["files"]) == {"lossless.rdc", "sq4.rdc", "dq4.rdc", "surp80.rdc", "lossless16.rdc"}
    for fname, entry in manifest["files"].items():
        data = (GOLDEN / fname).read_bytes()
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"golden file {fname} was modified"


@pytest.mark.parametrize("backend", ["numpy", "numba", "constriction", "auto"])
@pytest.mark.parametrize("fname", ["lossless.rdc", "sq4.rdc", "dq4.rdc", "surp80.rdc", "lossless16.rdc"])
def test_golden_files_decode_to_the_stored_arrays(fname, backend):
    if backend == "constriction" and not HAVE_CS or backend == "numba" and not HAVE_NUMBA:
        pytest.skip(f"{backend} backend not available")
    entry = _manifest()["files"][fname]
    data = (GOLDEN / fname).read_bytes()
    expected = _expected(entry)
    with ans.use_backend(backend):
        streamed = rdformat.load(data)
        with rdformat.open(data) as f:
            by_name = {k: f.get_tensor(k) for k in f.keys()}
    assert_same(streamed, expected)
    assert_same(by_name, expected)


@pytest.mark.skipif(not (REPO.parent / "shared" / "models" / "onet.pt").exists(), reason="MTCNN checkpoints absent")
def test_real_checkpoint_decodes_without_constriction(tmp_path):
    """The real MTCNN onet checkpoint, lossless and lossy, decoded where constriction cannot be imported."""
    torch = pytest.importorskip("torch")
    sd = {k: v.numpy() for k, v in torch.load(REPO.parent / "shared" / "models" / "onet.pt", weights_only=True).items()}
    files = {}
    for name, kwargs in (("lossless", {}), ("sq", {"bits": 4.0})):
        buf = io.BytesIO()
        rdformat.save(sd, buf, **kwargs)
        files[name] = buf.getvalue()
        (tmp_path / f"{name}.rdc").write_bytes(files[name])
    code = f"""
import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import conftest
import numpy as np, rdformat
from rdformat.entropy import ans
assert ans.available_backends() == ['numpy'], ans.available_backends()
assert 'constriction' not in sys.modules or sys.modules['constriction'] is None
assert 'numba' not in sys.modules
for name in ('lossless', 'sq'):
    t = rdformat.load({str(tmp_path)!r} + '/' + name + '.rdc')
    np.savez({str(tmp_path)!r} + '/' + name + '.npz', **{{k: v.view(np.uint8) for k, v in t.items()}})
print('OK')
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=subprocess_env(**BLOCK_ALL))
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stdout + res.stderr
    for name, data in files.items():
        here = decode_with(data, "auto")
        with np.load(tmp_path / f"{name}.npz") as z:
            for k, v in here.items():
                assert z[k].tobytes() == v.view(np.uint8).tobytes(), (name, k)
        if name == "lossless":
            for k, v in sd.items():
                assert here[k].tobytes() == v.tobytes(), k
