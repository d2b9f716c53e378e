"""Exit codes and the report channel shared by the ``rdc`` commands."""

from __future__ import annotations

import sys
from collections.abc import Iterable

PROG = "rdc"
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class Out:
    """Where a command's messages and progress bars go (nowhere with ``--quiet``, but errors)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str = "") -> None:
        """Print a line of the command's report."""
        if not self.quiet:
            print(text)

    def progress(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
        """``iterable`` with a progress bar on stderr when it is a terminal."""
        if self.quiet:
            return iterable
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is optional
            return iterable
        # disable=None: bars only when stderr is a terminal, so logs and pipes stay clean
        return tqdm(iterable, total=total, desc=desc, unit="tensor", file=sys.stderr, leave=False,
                    disable=None, dynamic_ncols=True)
