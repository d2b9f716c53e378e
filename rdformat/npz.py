"""NumPy ``.npz`` adapter: archives of arrays <-> ``.rdc`` containers (numpy only, no framework).

Archives are read member by member, each ``.npy`` header checked (shape, dtype, size against the
member's bytes) before any data is read.
"""

from __future__ import annotations

import os
import tokenize
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np

from .api import Limits
from .adapters import (FormatError, InvalidInputError, Progress, UnsafeInputError, _progress, atomic_output,
                       check_shape, is_structural_dtype, make_metadata, open_rdc, write_rdc)
from .format.dtypes import numpy_dtype



#: bfloat16/float8 tensors go into ``.npz`` archives as their bit patterns (``uint16``/``uint8``
#: arrays, readable by any numpy), and the archive member's zip comment says which type they are:
#: ``rdformat-dtype=bfloat16`` (or ``float8_e4m3fn``, ``float8_e5m2``). numpy itself would save them as
#: opaque void arrays (``|V2``) that lose the type.
NPZ_DTYPE_TAG = b"rdformat-dtype="
_NPZ_BIT_CARRIERS = {"bfloat16": np.dtype("<u2"), "float8_e4m3fn": np.dtype("u1"), "float8_e5m2": np.dtype("u1")}
#: Largest ``.npy`` header read (numpy's own default).
_NPY_MAX_HEADER = 10000
# what numpy's header parser raises on a malformed header (it tokenizes and literal_evals the dict)
_NPY_HEADER_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, TypeError, KeyError, RecursionError,
                      MemoryError, OSError, EOFError, zipfile.BadZipFile)


class NpzMember:
    """One array of an ``.npz`` archive, as its header describes it (nothing of its data read)."""

    __slots__ = ("name", "member", "shape", "dtype", "fortran", "stored_dtype")

    def __init__(self, name: str, member: str, shape: tuple[int, ...], dtype: np.dtype, fortran: bool,
                 stored_dtype: np.dtype) -> None:
        self.name, self.member, self.shape, self.dtype = name, member, shape, dtype
        self.fortran, self.stored_dtype = fortran, stored_dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the array's data."""
        n = self.stored_dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def _npy_header(fh: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_NPY_MAX_HEADER)
        else:
            raise FormatError(f"{where}: .npy format version {version} is not supported")
    except _NPY_HEADER_ERRORS as exc:
        raise FormatError(f"{where}: malformed .npy header: {type(exc).__name__}: {exc}") from exc
    if dtype.hasobject:
        raise UnsafeInputError(f"{where}: a pickled object array; refused (only numeric arrays)")
    return check_shape(shape, what=where), bool(fortran), dtype


def _npz_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> tuple[NpzMember, int]:
    """The checked header of one member and the offset of its data; its size must match the member's."""
    name = info.filename[:-4]
    where = f"{path}: array {name!r}"
    with zf.open(info) as fh:
        shape, fortran, stored = _npy_header(fh, where)
        start = fh.tell()
    dtype = stored
    tag = info.comment
    if tag.startswith(NPZ_DTYPE_TAG):
        type_name = tag[len(NPZ_DTYPE_TAG):].decode("ascii", "replace")
        carrier = _NPZ_BIT_CARRIERS.get(type_name)
        if carrier is None or stored.newbyteorder("<") != carrier.newbyteorder("<"):
            raise FormatError(f"{where}: tagged {type_name!r} but stored as {stored}")
        dtype = numpy_dtype(type_name)
    member = NpzMember(name, info.filename, shape, dtype, fortran, stored)
    # The data must be exactly what the header claims: a header cannot make us allocate more than
    # the archive holds (an .npz claiming 2**40 elements in a few bytes is refused here).
    if member.nbytes != info.file_size - start:
        raise FormatError(f"{where}: header claims {member.nbytes} bytes of data, the member holds "
                          f"{max(info.file_size - start, 0)}")
    return member, start


def npz_members(path: str | os.PathLike) -> list[NpzMember]:
    """The arrays of an ``.npz`` archive with their checked headers, in archive order (no data read)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [_npz_member(zf, info, os.fspath(path))[0] for info in _npz_infos(zf, os.fspath(path))]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise FormatError(f"{path}: not a readable .npz archive: {exc}") from exc


def _npz_infos(zf: zipfile.ZipFile, path: str) -> list[zipfile.ZipInfo]:
    infos = [i for i in zf.infolist() if not i.is_dir()]
    seen: set[str] = set()
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise FormatError(f"{path}: member {info.filename!r} is not an .npy array")
        if info.filename in seen:
            raise FormatError(f"{path}: member {info.filename!r} appears twice")
        seen.add(info.filename)
    return infos


def iter_npz(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield the arrays of an ``.npz`` archive one at a time (object arrays refused).

    Headers are checked before any data is read (see :func:`npz_members`); bfloat16/float8 arrays
    tagged as :data:`NPZ_DTYPE_TAG` describes come back with their type.
    """
    where = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise FormatError(f"{where}: not a readable .npz archive: {exc}") from exc
    with zf:
        for info in _npz_infos(zf, where):
            try:
                member, start = _npz_member(zf, info, where)
                with zf.open(info) as fh:
                    fh.seek(start)
                    buf = bytearray(member.nbytes)
                    view = memoryview(buf)
                    got = 0
                    while got < len(buf):
                        piece = fh.read(min(1 << 24, len(buf) - got))
                        if not piece:
                            raise FormatError(f"{where}: array {member.name!r} is truncated")
                        view[got:got + len(piece)] = piece
                        got += len(piece)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                if isinstance(exc, InvalidInputError):
                    raise
                raise FormatError(f"{where}: array {info.filename[:-4]!r}: {exc}") from exc
            array = np.frombuffer(buf, dtype=member.stored_dtype)
            if member.fortran:
                array = np.ascontiguousarray(array.reshape(member.shape[::-1]).T)
            else:
                array = array.reshape(member.shape)
            yield member.name, array.view(member.dtype) if member.dtype != member.stored_dtype else array


def write_npz(path: str | os.PathLike, items: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write arrays to an ``.npz`` archive, one array at a time (atomic; zip64 for big arrays).

    bfloat16/float8 arrays are stored as their bit patterns, tagged (see :data:`NPZ_DTYPE_TAG`).
    Names that a zip archive cannot hold distinctly (a NUL cuts a zip name short; a name twice) are
    refused with :class:`InvalidInputError` before anything is written.
    """
    with atomic_output(path) as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            members: set[str] = set()
            for name, array in items:
                if not isinstance(name, str) or "\x00" in name:
                    raise InvalidInputError(f"tensor {name!r}: a name with a NUL character cannot go into .npz")
                member = f"{name}.npy"
                if member in members:
                    raise InvalidInputError(f"tensor {name!r}: appears twice; an .npz holds each name once")
                members.add(member)
                array = np.asarray(array)
                info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o600 << 16
                carrier = _NPZ_BIT_CARRIERS.get(array.dtype.name)
                if carrier is not None:
                    info.comment = NPZ_DTYPE_TAG + array.dtype.name.encode("ascii")
                    array = array.view(carrier.newbyteorder("="))
                elif array.dtype.kind not in "biuf":
                    raise InvalidInputError(f"tensor {name!r}: dtype {array.dtype} cannot go into .npz")
                with zf.open(info, "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asarray(array, order="C"), allow_pickle=False)




def compress_file(src: str | os.PathLike, dst: str | os.PathLike | BinaryIO, *, codec: Any = "lossless",
                  lossy: Any = None, progress: Progress | None = None) -> None:
    """Convert an ``.npz`` archive into an .rdc container (every header checked before anything is written)."""
    members = npz_members(src)
    structural = [m.name for m in members if is_structural_dtype(m.dtype)]
    items = _progress(progress)(iter_npz(src), total=len(members), desc="compress")
    write_rdc(dst, items, metadata=make_metadata("npz"), structural=structural, codec=codec, lossy=lossy)


def decompress_file(src: str | os.PathLike | bytes, dst: str | os.PathLike, *, progress: Progress | None = None,
                    budget: int | None = None, limits: Limits | None = None) -> None:
    """Restore an .rdc container as an ``.npz`` archive (aliases as separate copies; ``budget``, ``limits``:
    see ``rdformat.open``)."""
    with open_rdc(src, budget=budget, limits=limits) as f:
        f.metadata  # noqa: B018 - .npz keeps none, but a whole read checks it (as rdc verify and load do)
        names = f.keys()
        items = _progress(progress)(((n, f.get_tensor(n)) for n in names), total=len(names), desc="decompress")
        write_npz(dst, items)


__all__ = ["NPZ_DTYPE_TAG", "NpzMember", "npz_members", "iter_npz", "write_npz", "compress_file", "decompress_file"]
