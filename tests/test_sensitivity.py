"""Calibration-based sensitivity: Fisher estimate from real data steers the rate allocation."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

import rdformat  # noqa: E402
import rdformat.torch as rtorch  # noqa: E402
from rdformat.producers.ratecontrol import plan  # noqa: E402


def _digits_mlp():
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[:1200]), y[:1200]).backward()
        opt.step()
    return model, X, y


def test_estimate_sensitivity_and_use_in_save():
    model, X, y = _digits_mlp()
    batches = [(X[i:i + 200], y[i:i + 200]) for i in range(0, 1200, 200)]
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    sens = rtorch.estimate_sensitivity(model, batches, loss)
    assert set(sens) == {n for n, _ in model.named_parameters()}
    assert all(v > 0 for v in sens.values())
    assert all(p.grad is None for p in model.parameters())  # left clean
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    weights = {k: sens[k] for k in ("0.weight", "2.weight")}
    p = plan(tensors, bits=2, sensitivity=weights)
    ratio = (weights["0.weight"] / weights["2.weight"]) ** 0.5
    assert p.steps["2.weight"] / p.steps["0.weight"] == pytest.approx(ratio, rel=1e-6)
    base = float((model(X[1200:]).argmax(1) == y[1200:]).float().mean())
    buf = io.BytesIO()
    rdformat.save(tensors, buf, bits=3, sensitivity=weights)
    back = rdformat.load(buf.getvalue())
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in back.items()})
    acc = float((model(X[1200:]).argmax(1) == y[1200:]).float().mean())
    assert acc >= base - 0.05


def test_no_batches_is_an_error():
    model, _, _ = _digits_mlp()
    with pytest.raises(rdformat.InvalidInputError):
        rtorch.estimate_sensitivity(model, [], lambda m, b: m(b).sum())
