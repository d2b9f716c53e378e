"""The dtype table of the .rdc format: stable numeric codes <-> numpy dtypes.

The codes are part of the file format (spec/rdc-v1.md, "Dtypes") and never change meaning. New dtypes
get new codes; a reader that meets an unknown code raises UnsupportedFeatureError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError, UnsupportedFeatureError

try:  # ml_dtypes gives numpy the bfloat16 and float8 types that ML frameworks use.
    import ml_dtypes as _ml
except ImportError:  # pragma: no cover - ml_dtypes is a dependency; kept optional for tiny installs
    _ml = None


@dataclass(frozen=True)
class DtypeInfo:
    """One row of the dtype table."""

    code: int
    name: str
    itemsize: int
    kind: str  # "bool", "uint", "int", "float"
    numpy: np.dtype | None  # None when ml_dtypes is unavailable


def _np(name: str) -> np.dtype | None:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        return np.dtype(getattr(_ml, name)) if _ml is not None else None
    return np.dtype(name)


_TABLE = [
    (1, "bool", 1, "bool"),
    (2, "uint8", 1, "uint"),
    (3, "int8", 1, "int"),
    (4, "uint16", 2, "uint"),
    (5, "int16", 2, "int"),
    (6, "uint32", 4, "uint"),
    (7, "int32", 4, "int"),
    (8, "uint64", 8, "uint"),
    (9, "int64", 8, "int"),
    (10, "float16", 2, "float"),
    (11, "bfloat16", 2, "float"),
    (12, "float32", 4, "float"),
    (13, "float64", 8, "float"),
    (14, "float8_e4m3fn", 1, "float"),
    (15, "float8_e5m2", 1, "float"),
]

DTYPES: dict[int, DtypeInfo] = {
    code: DtypeInfo(code, name, size, kind, _np(name)) for code, name, size, kind in _TABLE
}
_BY_NAME = {info.name: info for info in DTYPES.values()}


def by_code(code: int) -> DtypeInfo:
    """Look up a dtype by its file code; unknown codes raise UnsupportedFeatureError."""
    info = DTYPES.get(code)
    if info is None:
        raise UnsupportedFeatureError(f"unknown dtype code {code}; this reader knows codes 1..{max(DTYPES)}")
    if info.numpy is None:
        raise UnsupportedFeatureError(f"dtype {info.name} needs the ml_dtypes package: pip install ml_dtypes")
    return info


def by_numpy(dtype: np.dtype) -> DtypeInfo:
    """Look up the table row of a numpy dtype (native or little/big endian)."""
    dtype = np.dtype(dtype)
    name = dtype.name if dtype.kind != "V" else str(dtype)
    info = _BY_NAME.get(name)
    if info is None or info.numpy is None:
        raise InvalidInputError(
            f"dtype {dtype} cannot be stored; supported: {', '.join(sorted(_BY_NAME))}"
        )
    return info


def little_endian(array: np.ndarray) -> np.ndarray:
    """Return a C-contiguous little-endian version of ``array`` (a copy only when needed)."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def is_float(dtype: object) -> bool:
    """Whether ``dtype`` is a floating-point type of the table (float16/32/64, bfloat16, float8 ...).

    The one float predicate of the package: lossy producers decide from it (and from the item size)
    which tensors they may touch.
    """
    info = _BY_NAME.get(np.dtype(dtype).name)
    return info is not None and info.kind == "float"


def is_quantizable_float(dtype: object) -> bool:
    """Floats of two or more bytes: the tensors lossy producers may quantize or prune.

    One-byte floats (float8) are already coarse codes of their own; quantizing them again would
    rarely pay and would mix two quantizers' errors, so every lossy policy leaves them lossless.
    """
    return is_float(dtype) and np.dtype(dtype).itemsize >= 2


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a table name, ``bfloat16`` and float8 included (through ml_dtypes).

    Raises :class:`UnsupportedFeatureError` naming the fix when ml_dtypes is not installed, and
    :class:`InvalidInputError` for a name the table does not know.
    """
    info = _BY_NAME.get(name)
    if info is None:
        raise InvalidInputError(f"dtype {name!r} cannot be stored; supported: {', '.join(sorted(_BY_NAME))}")
    if info.numpy is None:
        raise UnsupportedFeatureError(f"dtype {name} needs the ml_dtypes package: pip install ml_dtypes")
    return info.numpy
