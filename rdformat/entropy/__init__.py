"""Entropy coding for rdformat: frequency tables and a multi-lane ANS coder.

See ``spec/entropy.md`` for the byte formats.
"""

from .ans import available_backends, decode, decode_many, default_lanes, encode, set_backend, use_backend
from .models import DEFAULT_PRECISION, MAX_PRECISION, FrequencyTable, entropy_bits

__all__ = [
    "entropy_bits",
    "FrequencyTable",
    "DEFAULT_PRECISION",
    "MAX_PRECISION",
    "encode",
    "decode",
    "decode_many",
    "set_backend",
    "use_backend",
    "available_backends",
    "default_lanes",
]
