"""Answers that are lists: split at top-level commas, tuples and intervals, sets (tier 2).

A bare comma list (``1,2``) or a ``\\{...\\}`` set is unordered; a bracketed one
(``(1, 2)``, ``[1,2)``) is a tuple or an interval, ordered, with its brackets part of the
answer. ``number_list`` reads a list of plain numbers; ``same_items`` matches lists of
any items written the same way, in any order.
"""
from __future__ import annotations

from fractions import Fraction

from replaygrpo.grading.numbers import to_number


def split_top(s: str) -> list[str]:
    """Split on commas at bracket depth 0."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def enclosed(s: str) -> bool:
    """`(...)` or `[...)` etc. whose first bracket closes only at the end: not `(1),(2)`."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return False
    depth = 0
    for ch in s[:-1]:
        depth += (ch in "([{") - (ch in ")]}")
        if depth == 0:
            return False
    return True


def number_list(s: str) -> tuple[str, list[tuple[Fraction, bool]]] | None:
    """Brackets + values for `1,2`, `(1, 2)`, `[1,2)`; None unless every item is a number."""
    brackets = ""
    if enclosed(s):
        brackets, s = s[0] + s[-1], s[1:-1]
    items = split_top(s)
    if len(items) < 2 and not brackets:
        return None
    values = [to_number(x) for x in items]
    if any(v is None for v in values):
        return None
    return brackets, values  # type: ignore[return-value]


def same_items(pred: str, gold: str) -> bool | None:
    """True when both are bare lists (or `\\{...\\}` sets) of the same item strings in any
    order, `E_{2},E_{1}` for `E_{1},E_{2}`; None (don't know) otherwise."""
    def items(s: str) -> list[str] | None:
        if s.startswith("\\{") and s.endswith("\\}"):
            s = s[2:-2]
        parts = split_top(s)
        return sorted(parts) if len(parts) > 1 and not enclosed(s) else None

    a, b = items(pred), items(gold)
    return True if a is not None and a == b else None
