"""Progress bars that stay readable in logs (few updates when stderr is not a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable, *, desc: str, disable: bool = False, total: int | None = None) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, disable=disable, total=total, mininterval=0.2 if interactive else 15.0,
                dynamic_ncols=True)
