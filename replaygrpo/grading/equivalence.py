"""Is a predicted answer equal to the gold one? Tiers, cheapest first:

1. ``normalize`` (``extract.py``): rewrites that make most correct answers identical to
   the gold string (units, ``\\text{}``, ``\\left``, ``\\dfrac``, ``x =``, ...).
2. ``fast_equivalent``: exact match, then plain numbers (ints, decimals, ``e`` notation,
   ``a \\times 10^{b}``, ``\\frac{a}{b}``; ``numbers.py``) and flat lists of them
   (``lists.py``), as Fractions.
3. ``numerically_different``: a tiny LaTeX evaluator at a probe point; a clear
   difference proves two answers different. Most wrong answers stop here, which
   matters because math-verify's ANTLR parser costs ~10 ms per new string.
4. ``mv_equivalent`` (``pool.py``): math-verify ``parse`` + ``verify`` with its
   ``signal.alarm`` timeouts off (they raise off the main thread), in a process that is
   killed if it overruns. ``grader.py`` puts the tiers together; this module never
   imports the process machinery.

Tiers 1-3 take microseconds and run in the caller. How numbers compare is a grader
setting (``settings.py``). By default, numbers written with a decimal point or exponent
compare with relative tolerance 1e-6 (math-verify rounds to 6 decimals, so it calls all
numbers below 5e-7 equal; the Qwen2.5-Math harness's 1e-4 would accept `.35628` for the
MATH gold `.35625`); integers and fractions compare exactly; a percent sign on either
side lets ``x`` also stand for ``x/100``; a problem's own absolute tolerance
(OlympiadBench ``error``) is honoured. Hostile strings (over ``MAX_LEN`` characters,
exponent towers, huge powers or factorials) are unequal unless identical; they never
reach sympy. No answer is ever passed to ``eval``.
"""
from __future__ import annotations

import cmath
import math
import re
import zlib

from replaygrpo.grading.extract import MAX_LEN, is_safe_for_sympy, normalize
from replaygrpo.grading.lists import enclosed, number_list, same_items, split_top
from replaygrpo.grading.numbers import DEFAULT, numbers_equal, percent_equal, to_number
from replaygrpo.grading.settings import GraderSettings

# ---------------------------------------------------------------- tier 2: fast paths
_BASE_NUMERAL = re.compile(r"([0-9A-Za-z]+)_\{?(\d+)\}?")  # `52_8`, `4210_{5}`


def fast_equivalent(pred: str, gold: str, settings: GraderSettings = DEFAULT, abs_tol: float | None = None,
                    has_percent: bool = False) -> bool | None:
    """True/False when cheap checks decide; None when sympy is needed. Inputs normalised;
    ``has_percent``: either answer was written with a percent sign before normalising."""
    if pred == gold:
        return True
    if not pred or not gold or max(len(pred), len(gold)) > MAX_LEN:
        return False
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        return percent_equal(a, b, settings, abs_tol, has_percent)
    ba, bb = _BASE_NUMERAL.fullmatch(pred), _BASE_NUMERAL.fullmatch(gold)
    if ba and bb:  # math-verify drops the subscript, so `4210_{8}` would "equal" `4210_{5}`
        return ba[1].lstrip("0").upper() == bb[1].lstrip("0").upper() and int(ba[2]) == int(bb[2])
    la, lb = number_list(pred), number_list(gold)
    if la is None or lb is None or la[0] != lb[0]:
        return same_items(pred, gold)
    (brackets, xs), ys = la, lb[1]
    eq = lambda x, y: numbers_equal(x, y, settings, abs_tol)  # noqa: E731
    if brackets:  # tuples and intervals are ordered
        return len(xs) == len(ys) and all(eq(x, y) for x, y in zip(xs, ys))
    # A bare comma list is a set of answers (olympiadbench `69,84`), as in math-verify, but
    # with its count: `16,3,1,1` lacks an answer if one `1` is missing.
    return len(xs) == len(ys) and all(any(eq(x, y) for y in ys) for x in xs) and all(any(eq(x, y) for x in xs) for y in ys)


# ---------------------------------------------------------------- tier 3: numeric disproof
# Evaluates the LaTeX most answers use (+ - * / ^, \frac, \sqrt, \pi, i, one-letter
# variables, functions with parentheses). Variables get fixed generic values: an
# identity holds at every point, so answers that differ at one point differ, however
# math-verify parses them. Agreement proves nothing; anything ambiguous raises _Bail.
# Numbers take an `e` exponent (`3.75e9`) so `(3.75e9)` and `3.75e9` agree.
_TOKEN = re.compile(r"\\[A-Za-z]+|\\\\|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|\S")
_FUNCS = {
    "\\sin": cmath.sin, "\\cos": cmath.cos, "\\tan": cmath.tan, "\\ln": cmath.log,
    "\\exp": cmath.exp, "\\cot": lambda z: 1 / cmath.tan(z),
    "\\sec": lambda z: 1 / cmath.cos(z), "\\csc": lambda z: 1 / cmath.sin(z),
}  # fmt: skip
# `e`/`E` as Euler's number and `i` as the imaginary unit are sound even where sympy
# reads them as plain symbols: they are then just one more probe point.
_CONSTS = {"\\pi": math.pi, "e": math.e, "E": math.e, "i": 1j}
_MATRIX = re.compile(r"\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}")
_PROBE_TOL = 1e-4  # relative, floored at 1: far outside math-verify's 6-decimal rounding


class _Bail(Exception):
    pass


def _probe(name: str) -> complex:
    # Deterministic, generic (irrational-looking) and distinct per variable name.
    h = zlib.crc32(name.encode(errors="surrogatepass")) % 9973
    return complex(0.61 + h / 9973 * 0.9)


def _evaluate(s: str) -> complex:
    """Value of a normalised LaTeX expression at the probe point, or raise _Bail."""
    toks, pos = _TOKEN.findall(s), [0]

    def peek() -> str | None:
        return toks[pos[0]] if pos[0] < len(toks) else None

    def take(expected: str | None = None) -> str:
        tok = peek()
        if tok is None or (expected is not None and tok != expected):
            raise _Bail
        pos[0] += 1
        return tok

    def starts_atom(tok: str | None) -> bool:
        return tok is not None and (tok[0].isalnum() or tok[0] == "." or tok in "({"
                                    or tok in _CONSTS or tok in _FUNCS
                                    or tok in ("\\frac", "\\sqrt"))  # fmt: skip

    def expr() -> complex:
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    def term() -> complex:
        value, divided = unary(), False
        while True:
            tok = peek()
            if tok in ("*", "\\cdot", "\\times"):
                take()
                value *= unary()
            elif tok in ("/", "\\div"):
                take()
                value, divided = value / unary(), True
            elif starts_atom(tok):
                if divided:
                    raise _Bail  # `1/2x`: (1/2)x or 1/(2x)? depends on the parser
                value *= power()
            else:
                return value

    def unary() -> complex:
        if peek() == "-":
            take()
            return -unary()
        if peek() == "+":
            take()
        return power()

    def power() -> complex:
        base = atom()
        if peek() == "^":
            take()
            if peek() == "{":
                exp = group()
            else:
                tok = take()
                if len(tok) > 1 and tok[0].isdigit():
                    raise _Bail  # `x^23` is x^2*3 in TeX; not every parser agrees
                pos[0] -= 1
                exp = atom()
            if abs(exp) > 200:
                raise _Bail
            base = base**exp
        if peek() == "!":
            raise _Bail
        return base

    def group() -> complex:
        take("{")
        value = expr()
        take("}")
        return value

    def atom() -> complex:
        tok = take()
        if tok[0].isdigit() or tok[0] == ".":
            if peek() == "_":
                raise _Bail  # `52_8` is a base-8 numeral
            return complex(float(tok))
        if tok == "(":
            value = expr()
            take(")")
            return value
        if tok == "{":
            pos[0] -= 1
            return group()
        if tok == "\\frac":
            return group() / group()
        if tok == "\\sqrt":
            if peek() == "[":
                take()
                index = expr()
                take("]")
                return group() ** (1 / index)
            return cmath.sqrt(group())
        if tok in _FUNCS and peek() == "(":
            take()
            value = expr()
            take(")")
            return _FUNCS[tok](value)
        if len(tok) == 1 and tok.isalpha():
            if peek() == "_":  # `a_1`, `x_{n}`: a variable of its own
                take()
                sub = take()
                while sub.count("{") > sub.count("}"):
                    sub += take()
                return _probe(tok + "_" + (sub[1:-1] if sub[0] == "{" else sub))  # x_1 = x_{1}
            return _CONSTS.get(tok, _probe(tok))
        if tok in _CONSTS:
            return _CONSTS[tok]
        raise _Bail

    value = expr()
    if peek() is not None:
        raise _Bail
    return value


def _probe_items(s: str) -> tuple[str, list[complex]]:
    """Kind ("ordered ()", "set", "matrix 2x1", "scalar"...) and values; raises _Bail."""
    m = _MATRIX.fullmatch(s)
    if m:
        rows = [r.split("&") for r in m.group(2).split("\\\\")]
        if len({len(r) for r in rows}) != 1:
            raise _Bail
        return f"matrix {len(rows)}x{len(rows[0])}", [_value(c) for r in rows for c in r]
    if enclosed(s) and len(split_top(s[1:-1])) > 1:
        return "ordered " + s[0] + s[-1], [_value(x) for x in split_top(s[1:-1])]
    items = split_top(s)
    if len(items) > 1:
        return "set", [_value(x) for x in items]
    return "scalar", [_value(s)]


def _value(s: str) -> complex:
    num = to_number(s)  # `4.5e33` is a number here, not 4.5*e*33
    value = complex(float(num[0])) if num is not None else _evaluate(s)
    if value != value or abs(value) == math.inf:
        raise _Bail
    return value


def numerically_different(pred: str, gold: str, abs_tol: float | None = None) -> bool:
    """True when the normalised answers provably differ; False means "don't know"."""
    try:
        (kind_p, xs), (kind_g, ys) = _probe_items(pred), _probe_items(gold)
    except (_Bail, ArithmeticError, ValueError, TypeError, RecursionError):
        return False
    if kind_p != kind_g:
        return False

    def _far(a: complex, b: complex) -> bool:
        return abs(a - b) > max(_PROBE_TOL * max(1.0, abs(a), abs(b)), abs_tol or 0.0)

    if kind_p == "set":  # some answer with no close partner on the other side
        return any(all(_far(x, y) for y in ys) for x in xs) or any(
            all(_far(x, y) for x in xs) for y in ys
        )
    return len(xs) != len(ys) or any(_far(x, y) for x, y in zip(xs, ys))


def _has_percent(s: str) -> bool:
    return "%" in s or "percent" in s


def prepare(pred: str, gold: str, settings: GraderSettings = DEFAULT,
            tolerance: float | None = None) -> tuple[bool | None, str, str]:
    """Tiers 1-3 plus guards: (decided result or None, normalised pred, normalised gold).

    ``tolerance`` is the problem's own absolute tolerance (None: none given); it counts
    only with ``settings.item_tolerance``.
    """
    abs_tol = tolerance if settings.item_tolerance else None
    p, g = normalize(pred), normalize(gold)
    decided = fast_equivalent(p, g, settings, abs_tol, _has_percent(pred) or _has_percent(gold))
    if decided is None and not (is_safe_for_sympy(p) and is_safe_for_sympy(g)):
        decided = False
    if decided is None and numerically_different(p, g, abs_tol):
        decided = False
    return decided, p, g
