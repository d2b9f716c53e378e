"""The save / load / open facade: the one module that joins the producers and the file writer.

``rdformat.save`` takes a model (a mapping or ``(name, array)`` pairs) and one lossy target at most,
described by :class:`Lossy` (or the shorthand keywords ``bits=``, ``rel_error=``, ``size=``,
``sparsity=``). Without a target the file is lossless. With one, a producer turns each chosen
tensor into what its codec stores (:class:`~rdformat.codecs.Prepared`): rate control with the
``sq``/``dq`` quantizers, or the SuRP pruning pass; the writer stores the rest losslessly. Aliases
(tied weights) are written once, after their target, by the same loop whatever the mode.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, BinaryIO

import numpy as np

from .codecs import Codec
from .errors import InvalidInputError
from .file.reader import Limits, RdcReader, load, open  # noqa: F401  (re-exported: the read half)
from .file.writer import CODEC_ALIASES, DEFAULT_CHUNK_BYTES, Writer
from .producers import ratecontrol as RC
from .producers import surp as SP
from .producers.channels import DEFAULT_STRENGTH, axis_scales, rate_strength, split_sensitivity

#: Lossy methods: scalar and trellis-coded quantization under rate control, SuRP pruning.
LOSSY_METHODS = ("auto", "sq", "dq", "surp")


@dataclass(frozen=True)
class Lossy:
    """One lossy target for a whole model: the vocabulary shared by ``rdformat.save``, the adapters
    and ``rdc compress``.

    Exactly one target is given: ``bits`` (bits per weight of the quantized tensors), ``rel_error``
    (relative L2 error of the model's float tensors), ``size`` (file bytes, a ceiling), or for SuRP
    ``sparsity`` (fraction of pruned weights) or ``distortion`` (relative L1 error of the pruned
    tensors). ``method``: ``"auto"`` (``sq`` or ``dq``, whichever the plan predicts smaller), ``"sq"``,
    ``"dq"`` or ``"surp"``. ``sensitivity`` maps tensor names to the weight of their squared error
    (output sensitivity, Fisher information): sensitive tensors get finer steps; a value that is a
    :class:`rdformat.producers.channels.ChannelSensitivity` also gives the tensor's channels their own
    steps (axis scales, format 1.4), following ``channel_strength`` of the measured spread (0: off).
    ``covariance`` maps weight tensors to the second moment of their layer's inputs
    (:class:`rdformat.producers.compensate.InputCovariance`): their ``sq`` levels are then chosen to
    keep the layer's outputs close rather than each weight (error compensation). ``fine`` quantizes
    1-D float vectors with a fine step instead of keeping them lossless. ``params`` are the method's
    tuning parameters (:class:`rdformat.producers.surp.SurpParams` for SuRP) and ``workers`` the
    processes SuRP may use.
    """

    bits: float | None = None
    rel_error: float | None = None
    size: int | None = None
    sparsity: float | None = None
    distortion: float | None = None
    method: str = "auto"
    sensitivity: Mapping[str, Any] | None = None
    fine: bool = True
    params: Any = None
    workers: int = 1
    channel_strength: float = DEFAULT_STRENGTH
    covariance: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.method not in LOSSY_METHODS:
            raise InvalidInputError(f"unknown lossy method {self.method!r}; known: {', '.join(LOSSY_METHODS)}")
        given = [k for k in ("bits", "rel_error", "size", "sparsity", "distortion") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InvalidInputError("a lossy target needs exactly one of bits, rel_error, size, sparsity or "
                                    f"distortion (got {', '.join(given) or 'none'})")
        if self.method == "surp" and given[0] in ("rel_error", "size"):
            raise InvalidInputError(f"SuRP takes sparsity=, bits= or distortion=, not {given[0]}=")
        if self.method != "surp" and given[0] in ("sparsity", "distortion"):
            raise InvalidInputError(f"{given[0]}= is a SuRP target: add method='surp'")
        for key in given:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(f"{key} must be a finite number, not {value!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise InvalidInputError(f"workers must be a positive integer, not {self.workers!r}")
        if self.covariance is not None:
            from .producers.compensate import InputCovariance

            if self.method in ("dq", "surp"):
                raise InvalidInputError(f"covariance= (error compensation) stores sq levels; it does not "
                                        f"combine with method={self.method!r}: use 'sq' or 'auto'")
            bad = [n for n, c in self.covariance.items() if not isinstance(c, InputCovariance)]
            if bad:
                raise InvalidInputError(f"covariance of {bad[0]!r} must be an rdformat InputCovariance "
                                        "(from rdformat.torch.input_covariances or rdformat.onnx_calibration."
                                        "onnx_input_covariances)")

    @property
    def target(self) -> tuple[str, float]:
        """The target's name and value, e.g. ``("bits", 4.0)``."""
        for key in ("bits", "rel_error", "size", "sparsity", "distortion"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        raise AssertionError("unreachable: __post_init__ checks one target")  # pragma: no cover

    @classmethod
    def coerce(cls, value: "Lossy | Mapping[str, Any] | None") -> "Lossy | None":
        """A :class:`Lossy` from itself, a mapping of its fields (e.g. ``{"bits": 4}``) or None."""
        if value is None or isinstance(value, Lossy):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise InvalidInputError(f"unknown lossy option(s) {', '.join(map(str, unknown))}; "
                                        f"known: {', '.join(sorted(known))}")
            return cls(**dict(value))
        raise InvalidInputError(f"a lossy target is a rdformat.Lossy or a mapping, not {type(value).__name__}")


@dataclass
class SaveSummary:
    """What :func:`save` wrote: the file's bytes and, for lossy files, the producer's figures.

    Also readable like a mapping (``summary["bytes"]``), as in earlier versions.
    """

    bytes: int
    method: str = "lossless"
    lossy_tensors: int = 0
    lossy_weights: int = 0
    #: Relative L2 error of the model's float tensors: 0 for lossless files, None for SuRP (see ``surp``).
    rel_l2_error: float | None = 0.0
    #: File bits per lossy weight, excluding the lossless tensors (size targets and SuRP).
    bits_per_weight: float | None = None
    global_step: float | None = None
    sparsity: float | None = None
    #: SuRP only: the encodings, plan and statistics (:class:`rdformat.producers.surp.SurpResult`).
    surp: Any = field(default=None, repr=False)

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping-style access with a default."""
        try:
            return self[key]
        except KeyError:
            return default

    def as_dict(self) -> dict:
        """The figures as a plain dict (without the SuRP result object)."""
        out = asdict(self)
        out.pop("surp", None)
        return out


# ----------------------------------------------------------------------------------------------------
# one writing loop for every mode


def _pairs(tensors: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    return iter(tensors.items()) if isinstance(tensors, Mapping) else iter(tensors)


def _write(target: str | os.PathLike | BinaryIO, items: Iterable[tuple[str, Any]], *,
           encode: Callable[[str, Any], Any], structural: set[str], aliases: Mapping[str, str] | None,
           **writer_options: Any) -> int:
    """Write ``items`` through ``encode(name, array)`` (an array or a ``Prepared``), each alias right
    after its target; an alias whose target never came is an error (the file is not published)."""
    by_target: dict[str, list[str]] = {}
    for alias, name in (aliases or {}).items():
        by_target.setdefault(name, []).append(alias)
    with Writer(target, **writer_options) as w:
        for name, array in items:
            w.add(name, encode(name, array), structural=name in structural)
            for alias in by_target.pop(name, ()):
                w.add_alias(alias, name)
        if by_target:
            raise InvalidInputError(f"aliases point to tensors that were not given: {sorted(by_target)}")
    return w.pos


def save(
    tensors: Mapping[str, np.typing.ArrayLike] | Iterable[tuple[str, np.typing.ArrayLike]],
    target: str | os.PathLike | BinaryIO,
    *,
    metadata: Mapping | None = None,
    graph: bytes | None = None,
    graph_format: str = "onnx",
    aliases: Mapping[str, str] | None = None,
    structural: Iterable[str] = (),
    codec: str | Codec | None = "lossless",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    lossy: Lossy | Mapping[str, Any] | None = None,
    bits: float | None = None,
    rel_error: float | None = None,
    size: int | None = None,
    sparsity: float | None = None,
    sensitivity: Mapping[str, float] | None = None,
    method: str = "auto",
    fine: bool = True,
    quantize: Iterable[str] | Callable[[str, Any], bool] | None = None,
    layered: bool = True,
) -> SaveSummary:
    """Write ``tensors`` (a mapping or ``(name, array)`` pairs, consumed one at a time) to ``target``.

    Lossless unless a lossy target is given, as ``lossy=rdformat.Lossy(...)`` or as one of the
    shorthands ``bits``, ``rel_error``, ``size``, ``sparsity`` (with ``method``, ``sensitivity`` and
    ``fine`` as in :class:`Lossy`). Lossy saving quantizes (or, with ``method="surp"``, prunes) the
    float tensors of two or more dimensions (or those ``quantize`` names or accepts) and stores the
    rest losslessly; it needs a mapping (producers read the model twice).

    ``aliases`` maps extra names to tensor names (tied weights, stored once). ``structural`` names
    tensors that steer shapes or control flow: they are always stored losslessly. ``layered`` (SuRP):
    the streams of all tensors follow the tensors in LAYER records ordered by value (format 1.3), so
    any prefix of the file, a budgeted read or a partial download, refines the whole model; False
    keeps each tensor's stream with it (format 1.1). Writes to a path are atomic. Returns a
    :class:`SaveSummary`.
    """
    if lossy is not None and not isinstance(lossy, (Lossy, Mapping)):
        # Before 0.3, ``lossy=`` named the tensors to quantize.
        warnings.warn("save(lossy=[names]) is deprecated; use quantize=[names]", DeprecationWarning, stacklevel=2)
        quantize, lossy = lossy, None
    shorthand = {k: v for k, v in (("bits", bits), ("rel_error", rel_error), ("size", size),
                                   ("sparsity", sparsity)) if v is not None}
    if lossy is not None and shorthand:
        raise InvalidInputError(f"give the lossy target either as lossy= or as {', '.join(shorthand)}=, not both")
    target_spec = Lossy.coerce(lossy) if lossy is not None else (
        Lossy(**shorthand, method="surp" if sparsity is not None and method == "auto" else method,
              sensitivity=sensitivity, fine=fine) if shorthand else None)
    structural = set(structural)
    options = dict(metadata=metadata, graph=graph, graph_format=graph_format, chunk_bytes=chunk_bytes)
    if target_spec is None:
        if isinstance(codec, str) and CODEC_ALIASES.get(codec, codec) in ("sq", "dq", "surp"):
            raise InvalidInputError(f"the {codec} codec needs a target: pass bits=, rel_error=, size= "
                                    "(or sparsity= for surp)")
        written = _write(target, _pairs(tensors), encode=lambda _n, a: a, structural=structural,
                         aliases=aliases, codec=codec, **options)
        return SaveSummary(bytes=written)
    if not isinstance(tensors, Mapping):
        raise InvalidInputError("lossy saving needs a mapping of tensors (producers read the model twice)")
    if target_spec.method == "surp":
        return _save_surp(tensors, target, target_spec, structural=structural, aliases=aliases,
                          quantize=quantize, options=dict(options, layered=bool(layered)))
    return _save_quantized(tensors, target, target_spec, structural=structural, aliases=aliases,
                           quantize=quantize, options=options)


def _names(tensors: Mapping[str, Any], quantize: Iterable[str] | Callable[[str, Any], bool] | None) -> list[str] | None:
    if quantize is None:
        return None
    if callable(quantize):
        return [n for n, a in tensors.items() if quantize(n, a)]
    return list(quantize)


def _save_quantized(tensors: Mapping[str, Any], target: str | os.PathLike | BinaryIO, spec: Lossy, *,
                    structural: set[str], aliases: Mapping[str, str] | None,
                    quantize: Iterable[str] | Callable[[str, Any], bool] | None, options: dict) -> SaveSummary:
    """Rate control (one slope for the model), then sq/dq levels for the chosen tensors."""
    names, fine_names = RC.select_tensors(tensors, structural=structural, names=_names(tensors, quantize),
                                          fine=spec.fine)
    kind, value = spec.target
    if not names:
        # Nothing qualifies for quantization (e.g. only biases): the file is simply lossless.
        if kind == "size":  # check the ceiling before touching the target
            probe = _write(io.BytesIO(), _pairs(tensors), encode=lambda _n, a: a, structural=structural,
                           aliases=aliases, **options)
            if probe > value:
                raise InvalidInputError(f"size {value} bytes cannot be met: no tensor can be quantized and "
                                        f"the lossless file takes {probe} bytes")
        written = _write(target, _pairs(tensors), encode=lambda _n, a: a, structural=structural,
                         aliases=aliases, **options)
        return SaveSummary(bytes=written)
    sens, channels = split_sensitivity(spec.sensitivity)
    if spec.sensitivity:
        options = {**options, "metadata": _record_sensitivity(options.get("metadata"), tensors, names, sens)}
    lossless_bytes = 0
    if kind == "size":
        lossless_bytes = _write(io.BytesIO(), ((n, a) for n, a in tensors.items() if n not in names),
                                encode=lambda _n, a: a, structural=structural, aliases=None,
                                chunk_bytes=options["chunk_bytes"])
    # Channel profiles: each such tensor is planned and quantized divided by its axis scales (spec 5.6),
    # following the profile as far as the rate makes it pay (a first plan tells the rate of other targets).
    scales, planned = {}, tensors
    strength = spec.channel_strength if any(n in channels for n in names) else 0.0
    if strength > 0:
        rate = value if kind == "bits" else RC.plan(
            tensors, **{kind: value}, lossy=names, sensitivity=sens or None, lossless_bytes=lossless_bytes,
            method=spec.method).predicted_bits_per_weight
        strength = rate_strength(strength, rate)
    for name in names:
        if name in channels and strength > 0:
            array = np.asarray(tensors[name])
            sc, sens[name] = axis_scales(channels[name], array.shape, strength)
            if sc:
                scales[name] = sc
                planned = dict(planned) if planned is tensors else planned
                planned[name] = sc.divide(array).astype(array.dtype)
    covariance = dict(spec.covariance or {})
    method = "sq" if covariance and spec.method == "auto" else spec.method
    for name in covariance:
        if name in names:  # a covariance that does not fit its tensor is the caller's error: say so now
            covariance[name].rows(np.shape(tensors[name]))
    goal = value
    # A size target is a ceiling: when the sample underestimated, aim lower and write again (into
    # memory first, so that a stream target receives one file).
    for _attempt in range(4):
        rp = RC.plan(planned, **{kind: goal}, lossy=names, sensitivity=sens or None,
                     lossless_bytes=lossless_bytes, method=method, covariance=covariance)
        err2 = 0.0

        def encode(name: str, array: Any) -> Any:
            nonlocal err2
            if name in rp.steps:
                done = RC.prepare_tensor(array, rp.steps[name], rp.method, scales=scales.get(name),
                                         covariance=covariance.get(name))
            else:
                step = RC.fine_step(array, rp.global_step) if name in fine_names else None
                if step is None:
                    return array
                done = RC.prepare_tensor(array, step, "sq", fine=True)
            err2 += done.squared_error
            return done.prepared

        out: Any = io.BytesIO() if kind == "size" else target
        written = _write(out, tensors.items(), encode=encode, structural=structural, aliases=aliases, **options)
        if kind != "size" or written <= value:
            break
        # Aim lower in proportion to the overshoot (a fixed margin over-corrects when the plan was far off).
        goal = int(goal * min(0.98, value / written)) - 64
        if goal <= lossless_bytes:
            break
    if kind == "size":
        _copy_out(out.getvalue(), target)
    norm2 = RC.squared_norm(tensors)
    return SaveSummary(
        bytes=written, method=rp.method, lossy_tensors=len(rp.steps), lossy_weights=rp.lossy_weights,
        rel_l2_error=math.sqrt(err2 / norm2) if norm2 else 0.0, global_step=rp.global_step,
        bits_per_weight=8.0 * (written - lossless_bytes) / max(rp.lossy_weights, 1) if kind == "size" else None,
    )


#: Reserved metadata entry of the package (adapters record their facts there too).
META_KEY = "rdformat"


def _record_sensitivity(metadata: Mapping | None, tensors: Mapping[str, Any], names: list[str],
                        sensitivity: Mapping[str, float]) -> dict:
    """``metadata`` plus the sensitivity rate control used, compactly: positions of the quantized tensors
    in the file's tensor order and their sensitivity relative to the mean (3 significant digits), so that
    ``rdc info`` can show where the bits went without repeating tensor names."""
    chosen = set(names)
    order = [i for i, n in enumerate(tensors) if n in chosen]
    values = list(RC.sensitivity_of([n for n in tensors if n in chosen], sensitivity).values())
    mean = sum(values) / len(values) if values else 1.0
    meta = dict(metadata or {})
    existing = meta.get(META_KEY)
    entry = dict(existing) if isinstance(existing, Mapping) else {}
    entry["sensitivity"] = {"index": order, "relative": [float(f"{v / mean:.3g}") for v in values]}
    meta[META_KEY] = entry
    return meta


def _copy_out(data: bytes, target: str | os.PathLike | BinaryIO) -> None:
    """Publish a file built in memory (atomically for paths)."""
    if isinstance(target, (str, os.PathLike)):
        from .format.atomic import atomic_output

        with atomic_output(target) as fh:
            fh.write(data)
    else:
        target.write(data)


def _save_surp(tensors: Mapping[str, Any], target: str | os.PathLike | BinaryIO, spec: Lossy, *,
               structural: set[str], aliases: Mapping[str, str] | None,
               quantize: Iterable[str] | Callable[[str, Any], bool] | None, options: dict) -> SaveSummary:
    """SuRP: global statistics (one pass), one threshold schedule, then every chosen tensor's stream."""
    chosen = _names(tensors, quantize)
    allowed = set(chosen) if chosen is not None else None
    for n in chosen or ():
        if n not in tensors:
            raise InvalidInputError(f"lossy tensor {n!r} is not in the model")

    def select(name: str, array: Any) -> bool:
        if name in structural:
            return False
        return name in allowed if allowed is not None else SP.is_prunable(array)

    params = spec.params or SP.SurpParams()
    if not isinstance(params, SP.SurpParams):
        raise InvalidInputError(f"SuRP parameters must be a SurpParams, not {type(params).__name__}")
    per_tensor = split_sensitivity(spec.sensitivity)[0] or None  # SuRP weighs whole tensors
    stats = SP.collect_statistics(tensors, select, params.normalize, sensitivity=per_tensor)
    kind, value = spec.target
    plan = SP.plan(stats, sparsity=value if kind == "sparsity" else None,
                   bits_per_weight=value if kind == "bits" else None,
                   distortion=value if kind == "distortion" else None, params=params)
    meta = dict(options.pop("metadata") or {})
    meta.setdefault("surp", {"target": plan.target, "weights": stats.n})
    if spec.sensitivity:
        meta = _record_sensitivity(meta, tensors, list(stats.tensors), per_tensor)
    encoded: dict[str, SP.EncodedTensor] = {}
    stream = SP.encode_iter(tensors, stats, plan, options["chunk_bytes"], spec.workers)
    order = ((name, (array, enc)) for name, array, enc in stream)

    # vectors (biases, norm gains) get a fine step as under the other lossy methods (relative error
    # about 0.1%), unless fine=False or the caller chose the tensors
    fine_names = RC.select_tensors(tensors, structural=structural, names=chosen, fine=spec.fine)[1]

    def encode(name: str, pair: tuple[Any, Any]) -> Any:
        array, enc = pair
        if enc is None:
            step = RC.fine_step(array, math.inf) if name in fine_names else None
            return array if step is None else RC.prepare_tensor(array, step, "sq", fine=True).prepared
        encoded[name] = enc
        return enc.prepared()

    written = _write(target, order, encode=encode, structural=structural, aliases=aliases, metadata=meta,
                     **options)
    result = SP.SurpResult(plan, stats, encoded, list(stats.passthrough))
    return SaveSummary(bytes=written, method="surp", lossy_tensors=len(encoded), lossy_weights=stats.n,
                       rel_l2_error=None, bits_per_weight=result.bits_per_weight,
                       sparsity=value if kind == "sparsity" else None, surp=result)


__all__ = ["Lossy", "SaveSummary", "save", "load", "open", "Limits", "RdcReader", "LOSSY_METHODS"]
