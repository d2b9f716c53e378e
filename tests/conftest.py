"""Test-session set-up.

``RDFORMAT_BLOCK_CONSTRICTION=1`` makes every ``import constriction`` fail for the whole session, as on a
platform without a constriction wheel (Linux aarch64/armv7); ``RDFORMAT_BLOCK_NUMBA=1`` does the same for
``numba`` (a platform without numba wheels). With both, rdformat must decode everything with its numpy ANS
path. The blocker is installed here, before any test module (and so rdformat) is imported.
With ``RDFORMAT_BACKEND_REPORT=path`` as well, the session writes to ``path`` (JSON) which ANS backends
were usable and how many numpy decodes ran, so a caller can check that the numpy path was really used
(``tests/test_portable.py`` does).
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys

BLOCK_VAR = "RDFORMAT_BLOCK_CONSTRICTION"
BLOCK_NUMBA_VAR = "RDFORMAT_BLOCK_NUMBA"
REPORT_VAR = "RDFORMAT_BACKEND_REPORT"


def _enabled(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


class _Block(importlib.abc.MetaPathFinder):
    """Meta-path finder that refuses one top-level package and its submodules."""

    def __init__(self, package: str, var: str) -> None:
        self.package, self.var = package, var

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname == self.package or fullname.startswith(self.package + "."):
            raise ImportError(f"{fullname} is blocked by {self.var} (simulating a platform without its wheel)")
        return None


_numpy_decodes = 0

# The compiled (numba) path serves every "auto" call of the session, small inputs included (outside tests
# it waits for a large job before paying numba's load time): the hostile-file, vector and fuzz tests must
# run through it. Sessions that block numba run the numpy path instead.
if not _enabled(BLOCK_NUMBA_VAR):
    os.environ.setdefault("RDFORMAT_NUMBA_MIN_SYMBOLS", "0")

for _package, _var, _module, _cache in (("constriction", BLOCK_VAR, "rdformat.entropy.ans_constriction", "_check_result"),
                                        ("numba", BLOCK_NUMBA_VAR, "rdformat.entropy.ans", "_numba_result")):
    if _enabled(_var):
        for _mod in [m for m in sys.modules if m == _package or m.startswith(_package + ".")]:
            del sys.modules[_mod]
        sys.meta_path.insert(0, _Block(_package, _var))
        if _module in sys.modules:  # imported early (a plugin): forget its backend check
            setattr(sys.modules[_module], _cache, None)


def _warm_compiled_kernels() -> None:
    """Load (or, on an empty numba cache, compile) every decode kernel once, before any test runs: tests that
    time a decode (the fuzz harnesses' hang check) must not count numba's one-off compilation."""
    import io

    import numpy as np

    import rdformat
    from rdformat.entropy import ans

    if not ans.compiled_active():
        return
    w = np.random.default_rng(0).laplace(0, 0.02, size=(64, 80)).astype(np.float32)
    for kwargs in ({}, {"bits": 4.0, "method": "sq"}, {"bits": 4.0, "method": "dq"}):
        buf = io.BytesIO()
        rdformat.save({"w": w, "h": w.astype(np.float16)}, buf, **kwargs)
        rdformat.load(buf.getvalue())


def pytest_sessionstart(session):  # noqa: ANN001 - pytest hook
    _warm_compiled_kernels()
    if not _enabled(REPORT_VAR):
        return
    from rdformat.entropy import ans_numpy

    real = ans_numpy.decode_lockstep

    def counting(blocks, **options):  # noqa: ANN001
        global _numpy_decodes
        _numpy_decodes += len(blocks)
        return real(blocks, **options)

    ans_numpy.decode_lockstep = counting


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001 - pytest hook
    path = os.environ.get(REPORT_VAR, "").strip()
    if not path or path == "0":
        return
    from rdformat.entropy import ans, ans_constriction

    report = {
        "blocked": _enabled(BLOCK_VAR),
        "numba_blocked": _enabled(BLOCK_NUMBA_VAR),
        "available_backends": ans.available_backends(),
        "reason": ans_constriction.constriction_module()[1],
        "numba_reason": ans._numba()[1],
        "constriction_loaded": sys.modules.get("constriction") is not None,
        "numba_loaded": sys.modules.get("numba") is not None,
        "numpy_blocks_decoded": _numpy_decodes,
        "exitstatus": int(exitstatus),
    }
    with open(path, "w") as f:
        json.dump(report, f)

# Hypothesis: the same examples on every run (derandomized, no example database), so the suite's
# time and outcome do not depend on earlier runs; set HYPOTHESIS_PROFILE=explore to search afresh.
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile("repeatable", derandomize=True, database=None)
_hsettings.register_profile("explore", derandomize=False)
_hsettings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
