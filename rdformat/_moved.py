"""Old module paths (before the 0.3 layering) keep working, with a DeprecationWarning.

``import rdformat.reader`` returns :mod:`rdformat.file.reader`, and so on: a finder on
``sys.meta_path`` answers for the old names only, so nothing else about importing changes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

#: Old module path -> where it lives now.
MOVED = {
    "rdformat.container": "rdformat.format.records",
    "rdformat.dtypes": "rdformat.format.dtypes",
    "rdformat.reader": "rdformat.file.reader",
    "rdformat.writer": "rdformat.file.writer",
    "rdformat.quantize": "rdformat.producers.quantize",
    "rdformat.trellis": "rdformat.producers.trellis",
    "rdformat.ratecontrol": "rdformat.producers.ratecontrol",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old names and loads them as the new modules."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):  # noqa: D102
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec) -> ModuleType:  # noqa: D102
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old name will be removed in a later release",
                      DeprecationWarning, stacklevel=3)
        module = importlib.import_module(new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: ModuleType) -> None:  # noqa: D102
        pass  # already executed under its new name


def install() -> None:
    """Register the finder once."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
