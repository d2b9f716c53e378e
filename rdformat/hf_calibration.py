"""Output sensitivity of a Hugging Face checkpoint (weights file + ``config.json``) without data.

A ``model.safetensors`` (or ``pytorch_model.bin``) next to a ``config.json`` is a runnable model when
``transformers`` is installed: the config names a built-in architecture, the file holds its weights.
This module builds that architecture, loads the file's tensors into it and measures each tensor's
output sensitivity by noise injection (:func:`rdformat.torch_sensitivity.output_sensitivity`) on
synthetic inputs (random token ids, or random pixels for vision models): what ``rdc compress`` does
by default for such a folder, as it does for ONNX models.

Safety: the config is untrusted. Only transformers' built-in architectures are built
(``trust_remote_code`` stays off), the model is first instantiated on PyTorch's ``meta`` device (no
memory) and must match the file tensor for tensor, name and shape, before a real one is allocated:
the file's own size bounds what the config can make this allocate. Nothing here is imported by the
core; torch and transformers are imported on use.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CalibrationUnavailable
from .producers.sensitivity import DEFAULT_ROUNDS, budgeted_samples, default_probe_names

#: A config.json larger than this is not a model config.
MAX_CONFIG_BYTES = 1 << 20
#: Synthetic batch: sequences (or images) per forward pass, and tokens per sequence.
DEFAULT_SAMPLES = 4
DEFAULT_TOKENS = 32
#: Wall time the per-tensor estimate aims at (as the ONNX estimator's): fewer samples, then fewer
#: noise rounds, when one timed forward pass says the passes would take longer.
DEFAULT_SECONDS = 20.0


def find_config(weights_path: str | Path) -> Path | None:
    """The ``config.json`` beside a weights file, if there is one (the Hugging Face folder layout)."""
    path = Path(weights_path).parent / "config.json"
    return path if path.is_file() else None


def _require():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise CalibrationUnavailable(f"{exc.name or 'transformers'} is not installed "
                                     "(pip install transformers torch runs Hugging Face checkpoints)") from None
    return torch, transformers


def _build(config_path: Path, weights: Mapping[str, np.ndarray]):
    """The architecture of ``config_path`` holding ``weights``, and the synthetic-input kind it takes."""
    torch, transformers = _require()
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise CalibrationUnavailable(f"{config_path} is larger than {MAX_CONFIG_BYTES} bytes: not a model config")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CalibrationUnavailable(f"{config_path.name} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
        raise CalibrationUnavailable(f"{config_path.name} names no model_type")
    # Module counts follow these fields, and even a meta-device build of millions of layers would hang:
    # every layer, expert or block holds at least one tensor of the file.
    for key, value in _config_items(raw):
        if isinstance(value, int) and any(w in key.lower() for w in ("layer", "expert", "block")) \
                and value > len(weights):
            raise CalibrationUnavailable(f"{config_path.name}: {key} = {value} is more than the file's "
                                         f"{len(weights)} tensors could fill")
    try:
        config = transformers.AutoConfig.for_model(**raw)
    except Exception as exc:  # noqa: BLE001 - unknown model types, bad values: a notice, not a crash
        raise CalibrationUnavailable(f"transformers cannot read {config_path.name}: {_first_line(exc)}") from None
    candidates = []
    for arch in raw.get("architectures") or []:
        cls = getattr(transformers, arch, None) if isinstance(arch, str) and arch.isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            candidates.append(cls)
    candidates.append(None)  # transformers.AutoModel: the bare architecture
    wanted = {n: tuple(a.shape) for n, a in weights.items()}
    for cls in candidates:
        try:
            with torch.device("meta"):  # shapes only: nothing allocated before they match the file
                model = transformers.AutoModel.from_config(config) if cls is None else cls(config)
        except Exception:  # noqa: BLE001 - this head does not fit the config: try the next
            continue
        for module in dict.fromkeys((model, getattr(model, "base_model", model))):
            state = module.state_dict()
            params = {n for n, _ in module.named_parameters()}
            if params and all(n in wanted and tuple(state[n].shape) == wanted[n] for n in params):
                # buffers too are bounded by the file: a config cannot make them huge on their own
                extra = sum(int(math.prod(b.shape)) for n, b in module.named_buffers() if n not in wanted)
                if extra > sum(int(a.size) for a in weights.values()) + (1 << 20):
                    raise CalibrationUnavailable("the config's model holds buffers far larger than the file")
                loaded = sorted(n for n, t in state.items() if n in wanted and tuple(t.shape) == wanted[n])
                return cls, config, module is not model, sorted(params), loaded
    raise CalibrationUnavailable(f"the weights do not match the architecture {config_path.name} describes")


def _config_items(raw: Mapping[str, Any], depth: int = 0):
    """``(key, value)`` of a config and of its nested configs (text_config, vision_config...)."""
    for key, value in raw.items():
        yield str(key), value
        if isinstance(value, Mapping) and depth < 4:
            yield from _config_items(value, depth + 1)


def _inputs(module, config, samples: int, tokens: int, seed: int) -> dict[str, Any]:
    torch, _ = _require()
    g = torch.Generator().manual_seed(seed)
    name = getattr(module, "main_input_name", "input_ids")
    if name == "input_ids":
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        if vocab < 2:
            raise CalibrationUnavailable("the config gives no vocabulary size for synthetic token ids")
        limit = int(getattr(config, "max_position_embeddings", 0) or tokens)
        length = max(2, min(tokens, limit))
        return {"input_ids": torch.randint(0, vocab, (samples, length), generator=g),
                "attention_mask": torch.ones(samples, length, dtype=torch.long)}
    if name == "pixel_values":
        side = getattr(config, "image_size", None)
        side = side[0] if isinstance(side, (list, tuple)) else side
        channels = int(getattr(config, "num_channels", 3) or 3)
        if not isinstance(side, int) or not 1 <= side <= 4096:
            raise CalibrationUnavailable("the config gives no image size for synthetic inputs")
        return {"pixel_values": torch.randn(samples, channels, side, side, generator=g)}
    raise CalibrationUnavailable(f"synthetic inputs for a model fed {name!r} are not known")


def hf_output_sensitivity(weights: Mapping[str, np.ndarray], config_path: str | Path, *, seed: int = 0,
                          samples: int = DEFAULT_SAMPLES, tokens: int = DEFAULT_TOKENS,
                          seconds: float | None = DEFAULT_SECONDS) -> tuple[dict[str, float], str]:
    """Per-tensor output sensitivity of a Hugging Face checkpoint, keyed by the weights' names.

    Args:
        weights: the checkpoint's tensors (numpy arrays, as the weights file holds them).
        config_path: its ``config.json``.
        seed: seeds the synthetic inputs and the estimator.
        samples, tokens: synthetic batch (sequences of ``tokens`` random ids, or random images).
        seconds: wall time the estimate aims at (None: no limit), planned from one timed pass.

    Returns:
        ``({name: sensitivity}, architecture name)``.

    Raises:
        CalibrationUnavailable: transformers is missing, the config is not a built-in architecture,
            or the weights do not fit it; callers fall back to weight-error allocation.
    """
    _torch, transformers = _require()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its config and init warnings are not the user's concern here
    try:
        return _measure(weights, Path(config_path), seed=seed, samples=samples, tokens=tokens, seconds=seconds)
    finally:
        transformers.logging.set_verbosity(verbosity)


def _measure(weights: Mapping[str, np.ndarray], config_path: Path, *, seed: int, samples: int, tokens: int,
             seconds: float | None) -> tuple[dict[str, float], str]:
    from .torch_sensitivity import output_sensitivity

    torch, transformers = _require()
    cls, config, base, params, loaded = _build(config_path, weights)
    floats = {n: f for n in loaded if (f := _as_float32(weights[n])) is not None}
    try:
        model = transformers.AutoModel.from_config(config) if cls is None else cls(config)
        module = model.base_model if base else model
        # every tensor of the file the module holds, persistent buffers (norm statistics) included
        state = {n: torch.from_numpy(np.array(floats[n] if n in floats else weights[n])) for n in loaded}
        module.load_state_dict(state, strict=False)
        module.eval()
    except Exception as exc:  # noqa: BLE001
        raise CalibrationUnavailable(f"transformers cannot build the model: {_first_line(exc)}") from None
    probe = default_probe_names({n: floats[n] for n in params if n in floats})
    if not probe:
        return {}, type(module).__name__
    inputs = _inputs(module, config, samples, tokens, seed)
    rounds = DEFAULT_ROUNDS
    try:
        with torch.no_grad():
            module(**inputs)  # the first pass pays one-off setup (and says whether the inputs fit at all)
            start = time.perf_counter()
            if seconds is not None:
                module(**inputs)  # what the estimate repeats
            per_pass = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - e.g. an encoder-decoder needs decoder inputs too
        raise CalibrationUnavailable(f"the model fails on synthetic inputs: {_first_line(exc)}") from None
    keep, rounds = budgeted_samples(len(probe), samples, per_pass, seconds, rounds=rounds)
    inputs = {k: v[:keep] for k, v in inputs.items()}
    try:
        found = output_sensitivity(module, inputs, names=probe, seed=seed, rounds=rounds, channels=False)
    except CalibrationUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - a forward pass failing on synthetic inputs
        raise CalibrationUnavailable(f"the model fails on synthetic inputs: {_first_line(exc)}") from None
    return {n: float(v) for n, v in found.items()}, type(module).__name__


def _as_float32(array: np.ndarray) -> np.ndarray | None:
    """A float tensor (float16/32/64, bfloat16, float8) as float32, as the model computes; else None."""
    a = np.asarray(array)
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16" or a.dtype.name.startswith("float8"):
        return a.astype(np.float32)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 200 else line[:197] + "..."


__all__ = ["find_config", "hf_output_sensitivity"]
