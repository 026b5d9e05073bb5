"""Plain numbers in an answer: their exact value, and when two of them are equal (tier 2).

``to_number`` reads ints, decimals, ``e`` notation, ``a \\times 10^{b}``, ``10^{b}``,
``\\frac{a}{b}`` and ``a/b`` as Fractions and says whether the number was written exactly.
``numbers_equal`` and ``percent_equal`` compare two of them under the grader settings:
exact values always, the problem's own absolute tolerance, ``rel_tol`` unless both are
written exactly, and a x100 scale where a percent sign allows it.
"""
from __future__ import annotations

import re
from fractions import Fraction

from replaygrpo.grading.settings import GraderSettings

DEFAULT = GraderSettings()
_MAX_EXP_DIGITS = 3  # 10^{999} is fine for Fractions; 10^{10000} is refused

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"  # unambiguous: no backtracking
_PLAIN = re.compile(_NUM)
_SCI = re.compile(r"(" + _NUM + r")(?:\\times|\\cdot|\*|x)10\^\{?([+-]?\d+)\}?")
_POW10 = re.compile(r"10\^\{?([+-]?\d+)\}?")
_FRAC = re.compile(r"([+-]?)\\frac\{(" + _NUM + r")\}\{(" + _NUM + r")\}")
_SLASH = re.compile(r"(" + _NUM + r")/(" + _NUM + r")")


def _literal(text: str) -> tuple[Fraction, bool] | None:
    """Exact value of a plain number and whether it was written exactly."""
    mant, exp = text, 0
    if "e" in text or "E" in text:
        mant, _, e = text.lower().partition("e")
        exp = int(e)
    if len(mant) > 200 or abs(exp) >= 10**_MAX_EXP_DIGITS:
        return None
    value = Fraction(mant) * Fraction(10) ** exp
    decimals = mant.partition(".")[2]
    exact = exp == 0 and decimals.strip("0") == ""
    return value, exact


def to_number(s: str) -> tuple[Fraction, bool] | None:
    """(value, written_exactly) for a plain number in any common notation, else None."""
    try:
        if _PLAIN.fullmatch(s):
            return _literal(s)
        m = _SCI.fullmatch(s)
        if m:
            lit = _literal(m.group(1))
            exp = int(m.group(2))
            if lit is None or abs(exp) >= 10**_MAX_EXP_DIGITS:
                return None
            return lit[0] * Fraction(10) ** exp, False
        m = _POW10.fullmatch(s)
        if m and abs(int(m.group(1))) < 10**_MAX_EXP_DIGITS:
            return Fraction(10) ** int(m.group(1)), True
        m = _FRAC.fullmatch(s) or _SLASH.fullmatch(s)
        if m:
            sign = -1 if m.re is _FRAC and m.group(1) == "-" else 1
            num, den = _literal(m.group(m.lastindex - 1)), _literal(m.group(m.lastindex))
            if num is None or den is None or den[0] == 0:
                return None
            return sign * num[0] / den[0], num[1] and den[1]
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool], settings: GraderSettings = DEFAULT,
                  abs_tol: float | None = None) -> bool:
    """Equal values, or within the item's absolute tolerance, or (unless both are written
    exactly and ``exact_integers`` holds) within ``rel_tol``."""
    if a[0] == b[0]:
        return True
    if abs_tol is not None and abs(a[0] - b[0]) <= Fraction(abs_tol):
        return True
    if a[1] and b[1] and settings.exact_integers:
        return False  # both written exactly (ints, fractions): no tolerance
    return abs(a[0] - b[0]) <= Fraction(settings.rel_tol) * max(abs(a[0]), abs(b[0]))


def _scaled(x: tuple[Fraction, bool], factor: Fraction) -> tuple[Fraction, bool]:
    return x[0] * factor, x[1]


def percent_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool], settings: GraderSettings,
                  abs_tol: float | None, has_percent: bool) -> bool:
    """numbers_equal, also at a x100 scale where a percent sign allows it (``settings.percent``)."""
    if numbers_equal(a, b, settings, abs_tol):
        return True
    if not has_percent and settings.percent != "harness":
        return False
    hundred = Fraction(100)
    return numbers_equal(a, _scaled(b, 1 / hundred), settings) or numbers_equal(a, _scaled(b, hundred), settings)
