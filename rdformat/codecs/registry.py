"""The codec registry: stable codec ids -> codec classes.

It stands alone (it imports no codec): built-in codecs register themselves when
:mod:`rdformat.codecs` imports them, third-party codecs are found through the ``rdformat.codecs``
entry-point group the first time their id is asked for.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import CorruptDataError, InvalidInputError, UnsupportedFeatureError
from .base import Codec

_REGISTRY: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Register a codec class under its ``codec_id`` (usable as a class decorator)."""
    existing = _REGISTRY.get(cls.codec_id)
    if existing is not None and existing is not cls:
        raise InvalidInputError(f"codec id {cls.codec_id!r} is already registered by {existing.__qualname__}")
    _REGISTRY[cls.codec_id] = cls
    return cls


def get_codec_class(codec_id: str) -> type[Codec]:
    """The class registered for ``codec_id``; looks at entry points before giving up."""
    cls = _REGISTRY.get(codec_id)
    if cls is None:
        for ep in entry_points(group="rdformat.codecs"):
            if ep.name == codec_id:
                register_codec(ep.load())
                cls = _REGISTRY.get(codec_id)
                break
    if cls is None:
        raise UnsupportedFeatureError(
            f"unknown codec {codec_id!r}; known: {', '.join(sorted(_REGISTRY))} "
            "(a newer rdformat or a codec plug-in may be needed)"
        )
    return cls


def codec_from_config(codec_id: str, config: dict) -> Codec:
    """Instantiate the codec a tensor header names, with its stored configuration.

    A configuration is untrusted: a number beyond float range (JSON integers are unbounded) is a
    :class:`CorruptDataError` here for every codec, not an ``OverflowError`` from inside one.
    """
    cls = get_codec_class(codec_id)
    try:
        return cls.from_config(config)
    except OverflowError:
        raise CorruptDataError(f"{codec_id}: a configuration number is beyond float range") from None


def registered_codecs() -> list[str]:
    """Ids of the codecs registered so far."""
    return sorted(_REGISTRY)
