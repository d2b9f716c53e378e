"""The ``rdc`` command (``python -m rdformat``): compress, decompress, info, verify, demo.

:func:`main` is the entry point; the commands live in :mod:`.commands`.
"""

from __future__ import annotations

from .commands import main

__all__ = ["main"]
