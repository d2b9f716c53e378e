"""Exception hierarchy of rdformat.

Every problem rdformat detects in a file or in its input is raised as a subclass of
:class:`RdcError`. Each exception carries structured context so callers (and the CLI) can say
*where* a file is broken, not only *that* it is broken.
"""

from __future__ import annotations


class RdcError(Exception):
    """Root of every rdformat exception.

    Attributes:
        offset: absolute byte offset in the file/stream where the problem was found, if known.
        record: the kind of record being read (``"tensor"``, ``"chunk"``, ``"index"``...), if known.
        tensor: the name of the tensor concerned, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        record: str | None = None,
        tensor: str | None = None,
    ) -> None:
        self.message = message
        self.offset = offset
        self.record = record
        self.tensor = tensor
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        if self.record is not None:
            where.append(f"{self.record} record")
        if self.offset is not None:
            where.append(f"byte offset {self.offset}")
        return f"{self.message} ({', '.join(where)})" if where else self.message

    def with_context(
        self, *, offset: int | None = None, record: str | None = None, tensor: str | None = None
    ) -> "RdcError":
        """Fill in context fields that are still unknown and return ``self`` (for re-raising)."""
        if self.offset is None:
            self.offset = offset
        if self.record is None:
            self.record = record
        if self.tensor is None:
            self.tensor = tensor
        self.args = (self._render(),)
        return self


class NotRdcError(RdcError):
    """The data does not start with the .rdc magic bytes (not an .rdc file, or text-mode damage)."""


class UnsupportedVersionError(RdcError):
    """The file's major version is newer than this reader understands."""


class TruncatedError(RdcError):
    """The file ends before a record, chunk or footer is complete."""


class ChecksumError(RdcError):
    """A stored CRC does not match the bytes read."""


class CorruptDataError(RdcError):
    """A structure is internally inconsistent (bad length, bad table, payload that does not decode)."""


class LimitExceededError(RdcError):
    """A declared size exceeds a hard limit of the spec or a configured reader limit."""


class UnsupportedFeatureError(RdcError):
    """A required record type, codec or dtype that this reader does not know."""


class TensorNotFoundError(RdcError, KeyError):
    """No tensor of that name in the file."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0] if self.args else ""


class InvalidInputError(RdcError, ValueError):
    """Data given to a writer/encoder cannot be stored as asked (bad name, NaN for a lossy codec...)."""


class FormatError(InvalidInputError):
    """An input file in a foreign format (.pt, .safetensors, .onnx, .npz) is malformed or unusable."""


class UnsafeInputError(InvalidInputError):
    """An input was refused for safety: code-running pickles, paths that leave the model's folder..."""


class UnsafeCheckpointError(UnsafeInputError):
    """A checkpoint whose pickle needs more than tensors and plain containers (it could run code)."""


class MissingDependencyError(UnsupportedFeatureError):
    """The optional package needed for this format (torch, onnx...) is not installed."""



class CalibrationUnavailable(UnsupportedFeatureError):
    """A model cannot be run here for task-aware compression (custom ops, unknown shapes, no onnxruntime...).

    Callers fall back to weight-error allocation and say so in one line (``str(exc)``).
    """


class CommandLineError(InvalidInputError):
    """A problem with an ``rdc`` command's arguments found before any work starts (exit code 1)."""


__all__ = [
    "RdcError",
    "NotRdcError",
    "UnsupportedVersionError",
    "TruncatedError",
    "ChecksumError",
    "CorruptDataError",
    "LimitExceededError",
    "UnsupportedFeatureError",
    "TensorNotFoundError",
    "InvalidInputError",
    "FormatError",
    "UnsafeInputError",
    "UnsafeCheckpointError",
    "MissingDependencyError",
    "CommandLineError",
    "CalibrationUnavailable",
]
