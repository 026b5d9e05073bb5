"""One answer at a time: the cheap tiers here, math-verify in the helper process.

``equivalent`` and ``grade`` sit above both ``equivalence`` (tiers 1-3, pure) and
``pool`` (the killable processes that run math-verify), so neither imports the other's
caller. For many answers use ``GradingPool``, which shares the same tiers.
"""
from __future__ import annotations

from replaygrpo.grading.equivalence import prepare
from replaygrpo.grading.extract import extract_answer
from replaygrpo.grading.pool import verify_with_limit
from replaygrpo.grading.settings import GraderSettings


def equivalent(pred: str, gold: str, timeout: float = 5.0, settings: GraderSettings | None = None,
               tolerance: float | None = None) -> bool:
    """True if ``pred`` and ``gold`` denote the same answer. Never raises; anything that
    needs sympy for longer than ``timeout`` seconds counts as not equivalent.
    ``tolerance``: the problem's own absolute tolerance, if it has one."""
    try:
        decided, p, g = prepare(pred, gold, settings or GraderSettings(), tolerance)
        if decided is not None:
            return decided
        return verify_with_limit(p, g, timeout)
    except Exception:  # noqa: BLE001 - malformed input is simply wrong
        return False


def grade(response: str, gold: str, timeout: float = 5.0, settings: GraderSettings | None = None,
          tolerance: float | None = None) -> bool:
    """Extract the final answer from ``response`` (fallback per ``settings``) and compare it with ``gold``."""
    settings = settings or GraderSettings()
    try:
        answer = extract_answer(response, settings.fallback, settings.join_boxes)
        return answer is not None and equivalent(answer, str(gold), timeout, settings, tolerance)
    except Exception:  # noqa: BLE001
        return False
