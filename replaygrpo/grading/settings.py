"""Grader settings and the named profiles that fix them.

The choices that move benchmark numbers by points between published graders are made
explicit here, so an eval records which protocol it followed (results.json `grader`):

- ``rel_tol``: relative tolerance for numbers written inexactly (a decimal point or an
  exponent). ``exact_integers`` keeps integers and fractions exact whatever ``rel_tol``.
- ``percent``: ``"sign"`` reads ``x\\%`` as both x and x/100 (``50\\%`` = ``50`` = ``0.5``),
  but ``0.5`` = ``50`` only where a percent sign is written; ``"harness"`` compares every
  pair of numbers also at x100 and /100, as the Qwen2.5-Math harness does
  (``include_percentage``), so ``0.5`` = ``50`` always.
- ``fallback``: what is graded when a response has no ``\\boxed{}``: ``"phrase"`` (the
  last "the answer is X"), ``"math"`` (that, else the last ``$...$``/``\\(...\\)`` span
  of the last paragraph holding math), ``"last_number"`` (phrase, else the last number in
  the text, the harness's rule), or ``"none"``.
- ``join_boxes``: boxes that only connectives separate (``\\boxed{2}, \\boxed{3}``,
  ``\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}``) form one answer, as in
  math-verify; the harness reads the last box alone.
- ``item_tolerance``: honour a per-problem absolute tolerance where a benchmark gives one
  (OlympiadBench's ``error`` field, 1 of 675 problems); the harness ignores it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

PERCENT_MODES = ("sign", "harness")
FALLBACKS = ("none", "phrase", "math", "last_number")


@dataclass(frozen=True)
class GraderSettings:
    rel_tol: float = 1e-6
    """Relative tolerance for inexactly written numbers (math-verify rounds to 6 decimals)."""
    exact_integers: bool = True
    """Integers and fractions compare exactly (no tolerance), e.g. 100000 != 100001."""
    percent: str = "sign"
    """sign or harness; see the module docstring."""
    fallback: str = "math"
    """Answer of a response without a box: none, phrase, math or last_number."""
    join_boxes: bool = True
    """Boxes separated only by connectives (`,` `and` `\\quad`) are one comma-joined answer."""
    item_tolerance: bool = True
    """Use a problem's own absolute tolerance (OlympiadBench `error`) when it has one."""

    def __post_init__(self) -> None:
        if not self.rel_tol >= 0:
            raise ValueError(f"grader rel_tol must be >= 0, got {self.rel_tol!r}.")
        if self.percent not in PERCENT_MODES:
            raise ValueError(f"grader percent {self.percent!r} unknown; one of {', '.join(PERCENT_MODES)}.")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"grader fallback {self.fallback!r} unknown; one of {', '.join(FALLBACKS)}.")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PROFILES: dict[str, GraderSettings] = {
    # This project's grader: careful with numbers, lenient with how answers are written.
    "default": GraderSettings(),
    # The Qwen2.5-Math evaluation harness (also SimpleRL-Zoo's copy): math_equal's
    # isclose(rel_tol=1e-4) on every number, include_percentage, last-number fallback.
    "qwen_math": GraderSettings(rel_tol=1e-4, exact_integers=False, percent="harness", fallback="last_number",
                                join_boxes=False, item_tolerance=False),
}


def grader_settings(profile: str = "default", **overrides: Any) -> GraderSettings:
    """The settings of a named profile, with the given fields replaced (None = keep the profile's)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown grader profile {profile!r}; known: {', '.join(PROFILES)}.")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PROFILES[profile], **changes)
