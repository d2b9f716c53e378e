"""Test-session set-up.

``RDFORMAT_BLOCK_CONSTRICTION=1`` makes every ``import constriction`` fail for the whole session, as on a
platform without a constriction wheel (Linux aarch64/armv7): rdformat must then decode everything with its
numpy ANS path. The blocker is installed here, before any test module (and so rdformat) is imported.
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
REPORT_VAR = "RDFORMAT_BACKEND_REPORT"


def _enabled(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


class _BlockConstriction(importlib.abc.MetaPathFinder):
    """Meta-path finder that refuses ``constriction`` and its submodules."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname == "constriction" or fullname.startswith("constriction."):
            raise ImportError(f"{fullname} is blocked by {BLOCK_VAR} (simulating a platform without its wheel)")
        return None


_numpy_decodes = 0

if _enabled(BLOCK_VAR):
    for _mod in [m for m in sys.modules if m == "constriction" or m.startswith("constriction.")]:
        del sys.modules[_mod]
    sys.meta_path.insert(0, _BlockConstriction())
    if "rdformat.entropy.ans" in sys.modules:  # imported early (a plugin): forget its backend check
        sys.modules["rdformat.entropy.ans"]._check_result = None


def pytest_sessionstart(session):  # noqa: ANN001 - pytest hook
    if not _enabled(REPORT_VAR):
        return
    from rdformat.entropy import ans

    real = ans._decode_lockstep

    def counting(blocks):  # noqa: ANN001
        global _numpy_decodes
        _numpy_decodes += len(blocks)
        return real(blocks)

    ans._decode_lockstep = counting


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001 - pytest hook
    path = os.environ.get(REPORT_VAR, "").strip()
    if not path or path == "0":
        return
    from rdformat.entropy import ans

    report = {
        "blocked": _enabled(BLOCK_VAR),
        "available_backends": ans.available_backends(),
        "reason": ans._constriction()[1],
        "constriction_loaded": sys.modules.get("constriction") is not None,
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
