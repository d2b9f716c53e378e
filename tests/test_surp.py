"""SuRP: the vectorised pass against literal one-index-at-a-time implementations, the embedded stream,
targets, the codec through rdformat.save/load, budgeted reads and iterative pruning."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rdformat
import rdformat.surp as S
from rdformat.codecs import surp as C
from rdformat.format.dtypes import by_numpy
from rdformat.errors import RdcError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models")


def small_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": (rng.laplace(size=(40, 30)) * 0.1).astype(np.float32),
        "fc1.bias": rng.normal(size=40).astype(np.float32),
        "fc2.weight": (rng.laplace(size=(10, 40)) * 0.3).astype(np.float32),
        "conv.weight": (rng.laplace(size=(4, 3, 3, 3)) * 0.2).astype(np.float32),
    }


def normalised(model: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in model.items():
        if S.is_prunable(v):
            w = v.astype(np.float64).reshape(-1)
            out[k] = np.abs(w) / np.sqrt(np.dot(w, w))
    return out


# ------------------------------------------------------------------------------------------------
# literal implementations
# ------------------------------------------------------------------------------------------------


def literal_schedule(u: np.ndarray, plan: S.SurpPlan, seed: int = 0) -> tuple[np.ndarray, list]:
    """One index at a time on the vectorised schedule: pass p visits the weights not kept at its
    start, then the kept ones, each in permuted order, picks every residual above T[p] and subtracts
    T[p]. Returns the reconstruction (offset 0) and the picks as (pass, class, domain rank)."""
    n = u.size
    a, c = C.permutation_params(n, seed)
    order = [(a * j + c) % n for j in range(n)]
    T = plan.thresholds()
    res = u.astype(np.float64).copy()
    rec = np.zeros(n)
    kept = np.zeros(n, dtype=bool)
    picks = []
    for p in range(max(plan.passes, plan.new_passes)):
        t = float(T[p])
        started = kept.copy()
        if p < plan.new_passes:
            rank = 0
            for i in order:
                if not started[i]:
                    if res[i] > t:
                        res[i] -= t
                        rec[i] += t
                        kept[i] = True
                        picks.append((p, 1, rank))
                    rank += 1
        if p < plan.passes:
            rank = 0
            for i in order:
                if started[i]:
                    if res[i] > t:
                        res[i] -= t
                        rec[i] += t
                        picks.append((p, 0, rank))
                    rank += 1
    return rec, picks


def literal_paper(u: np.ndarray, kept_target: int, alpha: float = 1.0,
                  seed: int = 0) -> tuple[np.ndarray, float, float]:
    """The authors' algorithm, one index per step: threshold alpha*log(n/log n)*mean(residual),
    a random candidate above it, threshold *= (n-1)/n per pick; when nothing exceeds it, re-estimate
    from the mean residual (alpha *= 0.9 every 20 refreshes, as in their code). Stops when
    ``kept_target`` weights are nonzero. Returns (reconstruction, current threshold, threshold just
    before the last refresh): every weight above the latter has been picked (its cycle ran dry)."""
    rng = np.random.default_rng(seed)
    n = u.size
    s = math.log(n / math.log(n))
    res = u.astype(np.float64).copy()
    rec = np.zeros(n)
    a = alpha
    t = a * s * res.mean()
    refreshes = 0
    before = math.inf
    while np.count_nonzero(rec) < kept_target:
        cand = np.flatnonzero(res > t)
        if cand.size == 0:
            refreshes += 1
            if refreshes % 20 == 0:
                a *= 0.9
            before = t
            t = a * s * res.mean()
            continue
        i = int(rng.choice(cand))
        rec[i] += t
        res[i] -= t
        t *= (n - 1) / n
    return rec, t, before


# ------------------------------------------------------------------------------------------------
# vectorised vs literal
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity,refine", [(0.5, 0), (0.8, 2), (0.95, 1)])
def test_vectorised_equals_literal_schedule(sparsity: float, refine: int) -> None:
    """Same picks, same reconstruction, on every tensor of a small model."""
    model = small_model(1)
    res = S.compress(model, sparsity=sparsity, params=S.SurpParams(refine_passes=refine, offset=0.0))
    for name, u in normalised(model).items():
        rec, picks = literal_schedule(u, res.plan)
        runs = S.surp_runs(model[name].reshape(-1), float(np.sqrt(np.dot(model[name].astype(np.float64).ravel(),
                                                                           model[name].astype(np.float64).ravel()))),
                           res.plan)
        got = [(r.pass_index, r.cls, int(k)) for r in runs for k in r.ranks]
        assert got == picks
        dec = res.encoded[name].decode().astype(np.float64).reshape(-1)
        norm = res.encoded[name].config.norm
        np.testing.assert_allclose(np.abs(dec), (rec * norm).astype(np.float32), rtol=0, atol=0)
        assert np.all(np.sign(dec[dec != 0]) == np.sign(model[name].reshape(-1)[dec != 0]))


def test_kept_set_matches_paper_algorithm() -> None:
    """At the same sparsity both keep the largest normalised magnitudes; the literal algorithm keeps a
    random part of the band (last refresh threshold, current threshold], the vectorised one exactly
    the top K. Bound: kept sets differ only inside that band, and by at most its size."""
    model = {k: v for k, v in small_model(2).items() if S.is_prunable(v)}
    u_all = np.concatenate([normalised(model)[k] for k in model])
    n = u_all.size
    for sparsity in (0.5, 0.9):
        k = int(round((1 - sparsity) * n))
        rec_lit, t_now, t_before = literal_paper(u_all, k)
        kept_lit = rec_lit > 0
        res = S.compress(model, sparsity=sparsity)
        kept_vec = np.concatenate([res.encoded[name].decode().reshape(-1) != 0 for name in model])
        assert abs(int(kept_vec.sum()) - k) <= max(1, int(0.001 * n))
        top = np.zeros(n, dtype=bool)
        top[np.argsort(-u_all, kind="stable")[:int(kept_vec.sum())]] = True
        assert np.array_equal(kept_vec, top)  # exactly the top K (no ties in continuous data)
        assert int(kept_lit.sum()) == k
        assert np.all(kept_lit[u_all > t_before]) and not np.any(kept_lit[u_all <= t_now])
        diff = kept_lit ^ kept_vec
        band = (u_all > t_now) & (u_all <= t_before)
        assert np.all(band[diff])
        assert int(diff.sum()) <= 2 * int(band.sum())
        jacc = (kept_lit & kept_vec).sum() / (kept_lit | kept_vec).sum()
        assert jacc > 0.9


def test_refinement_converges_on_every_tensor() -> None:
    """With enough refinement passes every kept weight is reconstructed closely, also in a small
    layer whose L2-normalised magnitudes are far above the global mean (the first threshold is
    raised to decay * umax so that the greedy refinement can reach them)."""
    rng = np.random.default_rng(13)
    model = {"big": rng.laplace(size=(300, 200)).astype(np.float32),
             "tiny": rng.laplace(size=(10, 10)).astype(np.float32)}
    res = S.compress(model, sparsity=0.9, params=S.SurpParams(refine_passes=16, offset=0.0))
    for name, w in model.items():
        dec = res.encoded[name].decode()
        kept = dec != 0
        rel = np.abs(dec[kept] - w[kept]) / np.abs(w[kept])
        assert rel.max() < 0.01, name
    assert np.count_nonzero(res.encoded["tiny"].decode()) > 50  # the small layer keeps most weights


def test_decay_below_half_rejected() -> None:
    with pytest.raises(rdformat.InvalidInputError):
        S.SurpParams(decay=0.4)


def test_exact_zeros_never_chosen() -> None:
    rng = np.random.default_rng(3)
    w = rng.laplace(size=(50, 40)).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0.0
    res = S.compress({"w": w}, bits_per_weight=6.0)
    dec = res.encoded["w"].decode()
    assert np.all(dec[w == 0] == 0)
    assert np.count_nonzero(dec) > 0.6 * np.count_nonzero(w)


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------


def _real_or_synthetic() -> dict[str, np.ndarray]:
    path = os.path.join(SHARED, "rnet.pt")
    if os.path.exists(path):
        torch = pytest.importorskip("torch")
        sd = torch.load(path, weights_only=True)
        return {k: v.detach().numpy().astype(np.float32) for k, v in sd.items()}
    return small_model(4)


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9, 0.97, 0.99])
def test_sparsity_target_within_0_1_percent(sparsity: float) -> None:
    model = _real_or_synthetic()
    res = S.compress(model, sparsity=sparsity)
    m = res.measure(model)
    assert abs(m["sparsity"] - sparsity) <= 0.001
    # pass-through tensors are not counted and not encoded
    assert set(res.encoded) == {k for k, v in model.items() if S.is_prunable(v)}


def test_bits_and_distortion_targets() -> None:
    rng = np.random.default_rng(5)
    model = {"a": rng.laplace(size=(200, 150)).astype(np.float32),
             "b": (rng.laplace(size=(64, 64)) * 3).astype(np.float32)}
    for bits in (0.5, 2.0, 4.0):
        m = S.compress(model, bits_per_weight=bits).measure(model)
        assert abs(m["bits_per_weight"] - bits) <= 0.05 * bits + 0.02
    for dist in (0.6, 0.3, 0.1):
        m = S.compress(model, distortion=dist).measure(model)
        assert abs(m["distortion"] - dist) <= 0.05 * dist


def test_deterministic_and_seeded() -> None:
    model = small_model(6)
    a = S.compress(model, sparsity=0.8)
    b = S.compress(model, sparsity=0.8)
    for k in a.encoded:
        assert a.encoded[k].payloads == b.encoded[k].payloads
    c = S.compress(model, sparsity=0.8, params=S.SurpParams(seed=7))
    for k in a.encoded:  # another visiting order: other bytes, same kept set
        assert np.array_equal(a.encoded[k].decode() != 0, c.encoded[k].decode() != 0)


# ------------------------------------------------------------------------------------------------
# the embedded stream
# ------------------------------------------------------------------------------------------------


def _stream() -> tuple[bytes, int, C.SurpConfig, np.ndarray]:
    rng = np.random.default_rng(8)
    w = rng.laplace(size=(60, 80)).astype(np.float32)
    params = S.SurpParams(segment_bytes=96)
    enc = S.encode_tensor("w", w, S.plan_tensor(w, bits_per_weight=4.0, params=params))
    assert len(enc.payloads) == 1
    return enc.payloads[0], w.size, enc.config, w


_DATA, _COUNT, _CFG, _W = _stream()
_ENDS = C.segment_ends(_DATA, _COUNT)
_F32 = by_numpy(np.dtype(np.float32))


def test_stream_has_many_segments() -> None:
    assert len(_ENDS) >= 15 and _ENDS[-1] == len(_DATA)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=len(_DATA)), st.integers(min_value=0, max_value=len(_DATA)))
def test_every_prefix_decodes(cut1: int, cut2: int) -> None:
    lo, hi = sorted((cut1, cut2))
    a = C.decode_prefix(_DATA, _COUNT, _F32, _CFG, lo)
    b = C.decode_prefix(_DATA, _COUNT, _F32, _CFG, hi)
    # a prefix decodes like the whole segments it contains
    whole = max([e for e in _ENDS if e <= lo], default=0)
    np.testing.assert_array_equal(a, C.decode_prefix(_DATA[:whole], _COUNT, _F32, _CFG))
    # embedded: weights only join as the prefix grows, signs never change
    assert np.all((b != 0) | (a == 0))
    both = (a != 0) & (b != 0)
    assert np.all(np.sign(a[both]) == np.sign(b[both]))
    assert np.all((a == 0) | (np.sign(a) == np.sign(_W.reshape(-1))))


def test_prefix_error_shrinks() -> None:
    w = _W.reshape(-1).astype(np.float64)
    errs = [np.abs(C.decode_prefix(_DATA, _COUNT, _F32, _CFG, e).astype(np.float64) - w).sum() for e in [0] + _ENDS]
    assert errs[-1] < 0.3 * errs[0]
    # the decoder offset can make single steps slightly non-monotone; the trend must hold
    assert all(b <= a * 1.02 for a, b in zip(errs, errs[1:]))


def test_prefix_rate_close_to_one_shot() -> None:
    """A prefix of a long stream costs at most 0.2 bit/weight more than a one-shot file of the same
    distortion (rate counted as the whole budget, wasted partial segment included)."""
    rng = np.random.default_rng(9)
    w = rng.laplace(size=(300, 200)).astype(np.float32)
    n = w.size
    long = S.compress({"w": w}, bits_per_weight=4.0, chunk_bytes=1 << 24)
    data = long.encoded["w"].payloads[0]
    cfg = long.encoded["w"].config
    ww = w.reshape(-1).astype(np.float64)
    for frac in (0.1, 0.25, 0.5, 0.75):
        budget = int(frac * len(data))
        dec = C.decode_prefix(data, n, _F32, cfg, budget).astype(np.float64)
        dist = np.abs(ww - dec).sum() / np.abs(ww).sum()
        one = S.compress({"w": w}, distortion=dist, chunk_bytes=1 << 24)
        m = one.measure({"w": w})
        assert m["distortion"] <= dist * 1.05
        assert 8 * budget / n - m["bits_per_weight"] <= 0.2


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=len(_DATA) - 1), st.integers(min_value=0, max_value=255))
def test_corrupt_stream_raises_rdc_error_only(at: int, value: int) -> None:
    bad = bytearray(_DATA)
    bad[at] = value
    try:
        out = C.decode_prefix(bytes(bad), _COUNT, _F32, _CFG)
    except RdcError:
        return
    assert out.shape == (_COUNT,)


def test_spec_example() -> None:
    """The worked example of spec/rdc-v1.md section 5.5.7."""
    data = bytes.fromhex("17 02 00 03 02 01 02 01 02 40 0C 01 00 00 00 01 00 00 00 00 00 00 01 02")
    cfg = {"norm": 2.0, "t0": 0.25, "decay": 0.5, "umax": 0.45, "offset": 0.5, "seed": 0}
    out = C.decode_prefix(data, 4, _F32, cfg)
    np.testing.assert_array_equal(out, np.array([0.825, 0.0, -0.625, 0.0], dtype=np.float32))
    runs = [C.Run(0, C.CLASS_NEW, np.array([0, 2]), np.array([False, True])),
            C.Run(1, C.CLASS_REFINE, np.array([0]))]
    assert C.encode_runs(runs, 4) == data
    assert C.geometric_table(64).freqs[:7].tolist() == [3028, 768, 192, 48, 12, 3, 1]


def test_geometric_tables_valid() -> None:
    for j in range(1, 256):
        t = C.geometric_table(j)  # the constructor checks f >= 1 and the sum
        assert t.num_symbols == C.NSYM and int(t.freqs.sum()) == 1 << C.GEOMETRIC_PRECISION


def test_escapes_and_large_gaps_round_trip() -> None:
    """Gaps whose Rice quotients need escape classes, several runs, continuation across segments."""
    n = 1 << 21
    rng = np.random.default_rng(14)
    dense = np.sort(rng.choice(1000, size=400, replace=False))
    sparse = np.array([0, 1, 5, 70_000, 70_001, 1_900_000, n - 1])
    ranks = np.unique(np.concatenate([dense, sparse]))
    cfg = C.SurpConfig(norm=1.0, t0=0.5, decay=0.5, umax=1.0, offset=0.0, seed=3)
    neg = rng.random(ranks.size) < 0.5
    runs = [C.Run(0, C.CLASS_NEW, ranks, neg), C.Run(0, C.CLASS_REFINE, np.array([], dtype=np.int64)),
            C.Run(1, C.CLASS_NEW, np.array([2, 3, 1_000_000]), np.array([True, False, True])),
            C.Run(1, C.CLASS_REFINE, np.arange(0, ranks.size, 3))]
    data = C.encode_runs(runs, n, segment_bytes=40)
    assert len(C.segment_ends(data, n)) > 3
    idx, vals, used = C.decode_stream(data, n, cfg)
    assert used == len(data)
    a, c = C.permutation_params(n, 3)
    pos0 = ranks  # pass 0: nothing kept before, ranks are positions
    kept0 = set(pos0.tolist())
    free = np.setdiff1d(np.arange(n), pos0)  # not kept at the start of pass 1, in position order
    pos1 = free[[2, 3, 1_000_000]]
    want = {int(e): 0.5 * (-1 if g else 1) for e, g in zip(C.positions_to_indices(pos0, n, a, c), neg)}
    for j in np.arange(0, ranks.size, 3):
        e = int(C.positions_to_indices(np.array([pos0[j]]), n, a, c)[0])
        want[e] += 0.25 * np.sign(want[e])
    for p_, g in zip(pos1, (True, False, True)):
        assert int(p_) not in kept0
        want[int(C.positions_to_indices(np.array([p_]), n, a, c)[0])] = 0.25 * (-1 if g else 1)
    got = dict(zip(idx.tolist(), vals.tolist()))
    assert got == want


def test_truncated_stream_is_an_error_without_budget() -> None:
    with pytest.raises(RdcError):
        C.decode_prefix(_DATA[: len(_DATA) - 3], _COUNT, _F32, _CFG)


def test_bad_config_rejected() -> None:
    good = _CFG.to_json()
    for key, value in (("decay", 1.0), ("t0", 0.0), ("offset", 2.0), ("norm", float("nan")), ("seed", -1)):
        with pytest.raises(RdcError):
            C.SurpCodec.from_config({**good, key: value})
    with pytest.raises(RdcError):
        C.SurpCodec.from_config({**good, "extra": 1})


# ------------------------------------------------------------------------------------------------
# the codec through rdformat.save / load, budgets
# ------------------------------------------------------------------------------------------------


def test_codec_round_trip_layerwise(tmp_path) -> None:
    model = small_model(10)
    model["half"] = np.random.default_rng(1).laplace(size=(16, 16)).astype(np.float16)
    model["ints"] = np.arange(12, dtype=np.int32).reshape(3, 4)
    path = tmp_path / "m.rdc"
    summary = rdformat.save(model, path, sparsity=0.75, chunk_bytes=512)  # several chunks
    assert summary.method == "surp" and summary.surp is not None
    out = rdformat.load(path)
    with rdformat.open(path) as r:
        codecs = {k: r.info(k).codec for k in r.keys()}
    pruned = total = 0
    for k, v in model.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        if S.is_prunable(v):
            assert codecs[k] == "surp"
            pruned += int((out[k] == 0).sum())
            total += out[k].size
        else:
            assert codecs[k] != "surp"
            np.testing.assert_array_equal(out[k], v)
    assert abs(pruned / total - 0.75) <= 0.01  # one global schedule for the model


def test_surp_codec_refuses_raw_elements() -> None:
    with pytest.raises(rdformat.InvalidInputError, match="SuRP producer"):
        rdformat.save({"w": np.ones((8, 8), np.float32)}, io.BytesIO(), codec=C.SurpCodec())


def test_global_save_matches_compress(tmp_path) -> None:
    model = small_model(11)
    path = tmp_path / "g.rdc"
    res = S.save(model, path, sparsity=0.9, workers=2, chunk_bytes=1024).surp
    out = rdformat.load(path)
    ref = S.compress(model, sparsity=0.9, chunk_bytes=1024)
    for k, v in model.items():
        if S.is_prunable(v):
            np.testing.assert_array_equal(out[k], ref.encoded[k].decode())
            np.testing.assert_array_equal(out[k], res.encoded[k].decode())
        else:
            np.testing.assert_array_equal(out[k], v)
    kept = sum(int(np.count_nonzero(out[k])) for k in res.encoded)
    assert abs(1 - kept / res.n - 0.9) <= 0.001
    # the same target through plain rdformat.save gives the same file
    path2 = tmp_path / "g2.rdc"
    rdformat.save(model, path2, lossy=rdformat.Lossy(method="surp", sparsity=0.9), chunk_bytes=1024)
    assert path2.read_bytes() == path.read_bytes()


def test_load_budget(tmp_path) -> None:
    rng = np.random.default_rng(12)
    model = {"a": rng.laplace(size=(256, 256)).astype(np.float32), "b": rng.laplace(size=(128, 64)).astype(np.float32),
             "bias": rng.normal(size=64).astype(np.float32)}
    path = tmp_path / "b.rdc"
    S.save(model, path, bits=3.0)
    size = os.path.getsize(path)
    full = rdformat.load(path)
    prev_kept = -1
    for frac in (0.05, 0.2, 0.5, 0.8, 1.0):
        with rdformat.open(path, budget=int(frac * size)) as r:
            got = dict(iter(r))
        np.testing.assert_array_equal(got["bias"], full["bias"])  # not progressive: decoded in full
        kept = sum(int(np.count_nonzero(got[k])) for k in ("a", "b"))
        assert kept >= prev_kept
        prev_kept = kept
    for k in full:
        np.testing.assert_array_equal(got[k], full[k])
    with rdformat.open(path, budget=0) as r:
        assert r.prefix_fraction == 0.0
    with pytest.warns(DeprecationWarning):  # the old names still work
        old = S.load_budget(path, size)
    assert old.keys() == full.keys()
    with pytest.warns(DeprecationWarning):
        S.save(model, tmp_path / "old.rdc", bits_per_weight=3.0)


# ------------------------------------------------------------------------------------------------
# iterative SuRP with retraining
# ------------------------------------------------------------------------------------------------


def test_iterative_surp_masks_and_resume(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(64, 8)
    y = torch.randint(0, 4, (64,))

    def step(model) -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    sched = [0.5, 0.8, 0.9]
    seen = []

    def on_stage(stage, s, model):
        seen.append(stage)
        if stage == 1 and len(seen) == 2:
            raise KeyboardInterrupt  # interrupted after stage 1's training, before its state is saved
        return {"w0": float(model[0].weight.detach().abs().sum())}

    with pytest.raises(KeyboardInterrupt):
        S.iterative_surp(net, step, schedule=sched, steps_per_stage=5, state_dir=tmp_path, optimizer=opt,
                         on_stage=on_stage)
    log = S.iterative_surp(net, step, schedule=sched, steps_per_stage=5, state_dir=tmp_path, optimizer=opt,
                           on_stage=on_stage)
    assert [e["stage"] for e in log] == [0, 1, 2] and seen == [0, 1, 1, 2]
    w = [net[0].weight.detach().numpy(), net[2].weight.detach().numpy()]
    n = sum(a.size for a in w)
    zero = sum(int((a == 0).sum()) for a in w)
    assert abs(zero / n - 0.9) <= 0.002  # pruned weights stayed exactly zero through momentum + decay


def test_sensitivity_steers_surp(tmp_path) -> None:
    """A sensitive tensor keeps more of its weights (finer effective thresholds), the budget moves to it."""
    rng = np.random.default_rng(21)
    model = {"a": rng.laplace(size=(64, 64)).astype(np.float32), "b": rng.laplace(size=(64, 64)).astype(np.float32)}
    plain = rdformat.load(_saved(model, tmp_path / "p.rdc", rdformat.Lossy(method="surp", sparsity=0.8)))
    steered = rdformat.load(_saved(model, tmp_path / "s.rdc", rdformat.Lossy(method="surp", sparsity=0.8,
                                                                             sensitivity={"a": 20.0, "b": 1.0})))
    kept = lambda out, k: int(np.count_nonzero(out[k]))  # noqa: E731
    assert kept(steered, "a") > 1.5 * kept(plain, "a") and kept(steered, "b") < kept(plain, "b")
    assert abs(kept(steered, "a") + kept(steered, "b") - kept(plain, "a") - kept(plain, "b")) < 0.01 * 8192
    err = lambda out, k: float(np.linalg.norm(out[k] - model[k]))  # noqa: E731
    assert err(steered, "a") < err(plain, "a")
    with rdformat.open(tmp_path / "s.rdc") as f:
        assert f.metadata["rdformat"]["sensitivity"]["index"] == [0, 1]


def _saved(model, path, lossy):
    rdformat.save(model, path, lossy=lossy)
    return path


def test_surp_gives_vectors_a_fine_step_like_the_other_lossy_methods(tmp_path):
    rng = np.random.default_rng(7)
    model = {"w": rng.laplace(0, 0.02, (120, 90)).astype(np.float32),
             "b": rng.normal(0, 0.1, 120).astype(np.float32), "tiny": np.ones(3, np.float32)}
    sizes = {}
    for fine in (True, False):
        path = tmp_path / f"fine{fine}.rdc"
        sizes[fine] = rdformat.save(model, path, sparsity=0.8, fine=fine).bytes
        got = rdformat.load(path)
        with rdformat.open(path) as f:
            assert f.info("b").codec == ("sq" if fine else "bytesplit")
            assert f.info("tiny").codec != "sq"  # under 64 values: lossless
            assert f.info("w").codec == "surp"
        err = np.abs(got["b"] - model["b"]).max() / np.abs(model["b"]).max()
        assert (0 < err < 0.002) if fine else err == 0
    assert sizes[True] < sizes[False]
