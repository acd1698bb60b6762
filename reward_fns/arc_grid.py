"""ARC-AGI style grids: parse a grid out of a reply and compare it cell by cell.

A grid in a reply may be written as
  * a JSON / Python list of lists: ``[[0, 1], [1, 0]]`` (the last one in the reply wins);
  * rows of digits, one row per line, digits optionally separated by spaces or commas::

        0 1 2
        3 4 5

    (the last block of such lines wins; a block inside the last fenced code block or ``<answer>`` tag is
    preferred).
The ground truth is a list of lists of ints, or a string in either of the forms above.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .common import VerifyResult
from .extraction import answer_tag, last_code_block, last_match

__all__ = ["parse_grid", "extract_grid", "verify_arc", "grid_to_text"]

Grid = list[list[int]]


def _is_grid(obj: Any) -> bool:
    return (isinstance(obj, list) and len(obj) > 0 and all(isinstance(r, list) and r for r in obj)
            and all(isinstance(c, int) and not isinstance(c, bool) for r in obj for c in r))


# Written so that no two quantifiers can share the same characters (no super-linear backtracking on
# hostile input such as 100k spaces between rows).
_LIST_GRID = re.compile(r"\[\s*(?:\[\s*-?\d+(?:\s*,\s*-?\d+)*\s*\]\s*(?:,\s*)?)+\]")


def _last_bracketed_grid(text: str) -> Grid | None:
    """The last ``[[...]]`` list of lists of ints in `text` (one linear regex scan; no nesting is ambiguous
    because every row starts with ``[`` and holds only numbers)."""
    last = last_match(_LIST_GRID, text)
    if last is None:
        return None
    try:
        obj = json.loads(last.group(0).replace(",]", "]").rstrip())
    except ValueError:
        obj = None
    if obj is None:  # trailing commas ("[[1, 2],]") are not JSON
        rows = re.findall(r"\[([^\[\]]*)\]", last.group(0))
        obj = [[int(x) for x in re.findall(r"-?\d+", r)] for r in rows]
    return obj if _is_grid(obj) else None


_ROW_BLOCK = re.compile(r"(?:^[ \t]*(?:\[[ \t]*)?\d[\d, \t\]]*(?:\n|\Z))+", re.MULTILINE)
_MAX_ROWS = 200  # ARC grids have at most 30 rows; a longer block is parsed only this far (it cannot match)


def _last_digit_block(text: str) -> Grid | None:
    """The last block of consecutive lines made only of digits (and spaces / commas / brackets)."""
    last = last_match(_ROW_BLOCK, text)
    if last is None:
        return None
    lines = [ln for ln in last.group(0).splitlines() if ln.strip()][:_MAX_ROWS]
    rows = [[int(d) for d in re.findall(r"\d", ln)] for ln in lines]
    return rows if _is_grid(rows) else None


def parse_grid(text: Any) -> Grid | None:
    """A grid from a list of lists or from text (JSON lists or digit rows); None if there is none."""
    if _is_grid(text):
        return [list(r) for r in text]
    if hasattr(text, "tolist"):  # numpy arrays from parquet
        return parse_grid(text.tolist())
    if isinstance(text, (list, tuple)) and text and all(hasattr(r, "tolist") or isinstance(r, (list, tuple)) for r in text):
        return parse_grid([list(r.tolist() if hasattr(r, "tolist") else r) for r in text])
    if not isinstance(text, str):
        return None
    return _last_bracketed_grid(text) or _last_digit_block(text)


def extract_grid(response: str) -> Grid | None:
    """The student's final grid: inside the last ``<answer>`` tag or fenced block if any, else anywhere."""
    for region in (answer_tag(response), last_code_block(response, prefer=("", "text", "json", "python"))):
        if region:
            grid = parse_grid(region)
            if grid is not None:
                return grid
    return parse_grid(response)


def grid_to_text(grid: Grid) -> str:
    return "\n".join(" ".join(str(c) for c in row) for row in grid)


def verify_arc(response: str, ground_truth: Any) -> VerifyResult:
    gold = parse_grid(ground_truth)
    if gold is None:
        raise ValueError(f"arc ground truth is not a grid: {str(ground_truth)[:120]!r}")
    got = extract_grid(response or "")
    shape_exp = f"{len(gold)}x{len(gold[0])}"
    if got is None:
        return VerifyResult(0.0, reason="no grid found in the answer",
                            details={"shape_expected": shape_exp, "shape_got": "", "cells_wrong": -1})
    shape_got = f"{len(got)}x{len(got[0])}" if all(len(r) == len(got[0]) for r in got) else "ragged"
    details = {"shape_expected": shape_exp, "shape_got": shape_got, "cells_wrong": -1}
    if got == gold:
        details["cells_wrong"] = 0
        return VerifyResult(1.0, extracted=grid_to_text(got), reason="grid matches", details=details)
    if shape_got == shape_exp:
        wrong = sum(1 for r1, r2 in zip(gold, got) for a, b in zip(r1, r2) if a != b)
        details["cells_wrong"] = wrong
        return VerifyResult(0.0, extracted=grid_to_text(got),
                            reason=f"{wrong} of {len(gold) * len(gold[0])} cells differ", details=details)
    return VerifyResult(0.0, extracted=grid_to_text(got),
                        reason=f"wrong grid size: expected {shape_exp}, got {shape_got}", details=details)
