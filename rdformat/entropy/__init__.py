"""Entropy coding for rdformat: frequency tables and a multi-lane ANS coder.

See ``spec/entropy.md`` for the byte formats.
"""

from .ans import available_backends, decode, default_lanes, encode
from .models import DEFAULT_PRECISION, MAX_PRECISION, FrequencyTable

__all__ = [
    "FrequencyTable",
    "DEFAULT_PRECISION",
    "MAX_PRECISION",
    "encode",
    "decode",
    "available_backends",
    "default_lanes",
]
