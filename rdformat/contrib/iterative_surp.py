"""Iterative SuRP with retraining (PyTorch): the paper's prune-retrain schedule.

Built on the SuRP producer (:func:`rdformat.producers.surp.compress`); torch is imported when
:func:`iterative_surp` is called, never at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..format.atomic import atomic_output
from ..producers.surp import PAPER_SCHEDULE, SurpParams, compress

__all__ = ["iterative_surp"]


def iterative_surp(model: Any, train_step: Callable[[Any], Any], *, schedule: Sequence[float] = PAPER_SCHEDULE,
                   steps_per_stage: int = 100, state_dir: str | os.PathLike | None = None,
                   params: SurpParams | None = None, select: Callable[[str, Any], bool] | None = None,
                   optimizer: Any = None, on_stage: Callable[[int, float, Any], Any] | None = None,
                   emphasis: str | None = None) -> list[dict]:
    """Prune with SuRP along ``schedule``, retraining between stages; resumable.

    For each sparsity ``s`` of ``schedule`` (increasing): one-shot SuRP of the selected parameters
    to ``s`` (global statistics; the model's weights become the SuRP reconstruction, zeros exactly
    zero), then ``steps_per_stage`` calls of ``train_step(model)`` (one optimisation step each) with
    the pruned weights held at zero: their gradients are masked and they are re-zeroed after every
    step (momentum or weight decay cannot revive them). Zeros stay zero at the next stage, so masks
    only grow.

    ``params`` default: ``SurpParams(refine_passes=8)``.
    ``state_dir``: after every stage the model (and ``optimizer``) state, the masks and the log are
    saved there; calling again with the same directory resumes after the last finished stage.
    ``on_stage(stage, sparsity, model)`` runs after each stage (e.g. evaluation); its return value
    is logged. ``emphasis="fisher"``: the squared gradients seen while retraining (a diagonal Fisher
    estimate, read from ``.grad`` after each step) weight each tensor's error at the next stage, so
    tensors the loss is sensitive to keep more weights. Returns the log: one dict per stage.
    """
    import torch  # noqa: PLC0415 - torch only when this function is used

    # Intermediate reconstructions are not stored: refine them well, so retraining starts from
    # (nearly) the kept weights' own values, as in the literal algorithm where a weight enters
    # when the slowly shrinking threshold just passes below it.
    params = params or SurpParams(refine_passes=8)
    sched = [float(s) for s in schedule]
    if any(b <= a for a, b in zip(sched, sched[1:])):
        raise InvalidInputError("schedule must be strictly increasing")
    if emphasis not in (None, "fisher"):
        raise InvalidInputError(f"emphasis must be None or 'fisher', not {emphasis!r}")
    sel = select or (lambda name, p: p.dtype.is_floating_point and p.dim() >= 2)
    named = {name: p for name, p in model.named_parameters() if sel(name, p)}
    if not named:
        raise InvalidInputError("no parameters selected for SuRP")
    log: list[dict] = []
    fisher: dict[str, float] = {}
    start = 0
    state_path = Path(state_dir) if state_dir is not None else None
    masks: dict[str, Any] = {}
    if state_path is not None and (state_path / "progress.json").exists():
        progress = json.loads((state_path / "progress.json").read_text())
        if progress.get("schedule") != sched:
            raise InvalidInputError(f"{state_path} holds a run with another schedule")
        start = int(progress["done"])
        log = list(progress["log"])
        model.load_state_dict(torch.load(state_path / "model.pt", weights_only=True))
        masks = torch.load(state_path / "masks.pt", weights_only=True)
        if optimizer is not None and (state_path / "optimizer.pt").exists():
            optimizer.load_state_dict(torch.load(state_path / "optimizer.pt", weights_only=True))
    hooks = []

    def apply_masks() -> None:
        with torch.no_grad():
            for name, m in masks.items():
                named[name].mul_(m)

    try:
        for name, prm in named.items():
            hooks.append(prm.register_hook(lambda g, name=name: g * masks[name] if name in masks else g))
        apply_masks()
        for stage in range(start, len(sched)):
            s = sched[stage]
            weights = {name: prm.detach().cpu().numpy().astype(np.float32) for name, prm in named.items()}
            res = compress(weights, sparsity=s, params=params, sensitivity=fisher or None)
            dec = res.decode()
            with torch.no_grad():
                for name, prm in named.items():
                    t = torch.from_numpy(np.ascontiguousarray(dec[name])).to(prm.dtype).to(prm.device)
                    prm.copy_(t)
                    masks[name] = (t != 0).to(prm.dtype)
            grad2 = dict.fromkeys(named, 0.0)
            for _ in range(int(steps_per_stage)):
                train_step(model)
                if emphasis == "fisher":
                    for name, prm in named.items():
                        if prm.grad is not None:  # kept weights' gradients (pruned ones are masked to 0)
                            grad2[name] += float(prm.grad.detach().double().square().sum())
                apply_masks()
            if emphasis == "fisher":
                # per element of squared error: mean squared gradient over the tensor's kept weights
                kept = {name: max(1.0, float(masks[name].sum())) for name in named}
                fisher = {name: grad2[name] / kept[name] for name in named if grad2[name] > 0}
            entry = {"stage": stage, "sparsity": s, "bits_per_weight": res.bits_per_weight,
                     "kept": int(sum(int(m.sum().item()) for m in masks.values()))}
            if on_stage is not None:
                entry["metrics"] = on_stage(stage, s, model)
            log.append(entry)
            if state_path is not None:
                state_path.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), state_path / "model.pt")
                torch.save(masks, state_path / "masks.pt")
                if optimizer is not None:
                    torch.save(optimizer.state_dict(), state_path / "optimizer.pt")
                progress = json.dumps({"schedule": sched, "done": stage + 1, "log": log}, default=_jsonable)
                with atomic_output(state_path / "progress.json") as fh:
                    fh.write(progress.encode("utf-8"))
    finally:
        for h in hooks:
            h.remove()
    return log


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if hasattr(x, "item"):
        return x.item()
    return str(x)

