"""Pull the final answer out of a model response, and put answers in canonical form.

Departures from the usual "last ``\\boxed{}``" helpers (verl's ``last_boxed_only_string``,
the Qwen2.5-Math ``extract_answer``):

* Brace matching is one linear pass over the braces after the first box, so a
  10^6-character response or thousands of unbalanced ``\\boxed{`` cost O(n), not O(n^2).
* An unbalanced or empty last box falls back to the previous balanced, non-empty box,
  rather than returning garbage up to the end of the text.
* With no box at all, the last "final answer is X" / "the answer is X" / "Answer: X"
  is used. Anything else returns None; we never guess from the last number.

``normalize`` then rewrites an answer (or a gold) so that equal answers usually become
equal strings: units and ``\\text{}`` wrappers, ``\\left``/``\\right``, ``$``, spacing
commands, ``\\dfrac``, ``\\frac12``, degrees, percent, thousands separators, ``x =``.

``is_safe_for_sympy`` screens out strings that could hang sympy in C code.

Everything here is plain ``re`` without nested quantifiers, so it cannot backtrack
catastrophically, and ``extract_answer`` never raises.
"""
from __future__ import annotations

import re

# `\boxed{`, `\boxed {`, `\fbox{`: group 1 is the opening brace position marker.
_BOX_BRACE = re.compile(r"\\(?:boxed|fbox)\s*(\{)")
# `\boxed 5`: LaTeX lets a single-token argument follow after a space.
_BOX_TOKEN = re.compile(r"\\boxed[ \t]+([^\s${}\\]+)")
# Escaped braces `\{` `\}` are literal set braces, not grouping; `\\` is a line break
# and must be consumed first so that `\\}` still closes a group.
_BRACE_TOKEN = re.compile(r"\\\\|\\[{}]|[{}]")
# Fallback phrases. The answer runs to the end of the line.
_PHRASE = re.compile(
    r"(?:final\s+answer\s+is|the\s+answer\s+is|answer\s*:)[ \t:*]*([^\n]*)",
    re.IGNORECASE,
)
_INLINE_MATH = re.compile(r"^\$+([^$]+)\$+")
_MAX_NORMALIZE = 8_000  # longer answers are left as they are: only exact equality passes
MAX_LEN = 2_000  # longest normalised answer sent to sympy (olympiad golds reach ~450)


def _box_spans(text: str) -> list[tuple[int, int, int]]:
    """(start_of_command, content_start, content_end) for every box; end -1 if unbalanced."""
    opens = {m.start(1): m.start() for m in _BOX_BRACE.finditer(text)}
    if not opens:
        return []
    first = min(opens)
    closes: dict[int, int] = {}
    stack: list[int] = []
    for tok in _BRACE_TOKEN.finditer(text, first):
        ch = tok.group()
        if ch == "{":
            stack.append(tok.start())
        elif ch == "}" and stack:
            pos = stack.pop()
            if pos in opens:
                closes[pos] = tok.start()
    return sorted((opens[p], p + 1, closes.get(p, -1)) for p in opens)


def _last_box(text: str) -> tuple[int, str] | None:
    """Position and content of the last balanced, non-empty box of either form."""
    best: tuple[int, str] | None = None
    for start, lo, hi in reversed(_box_spans(text)):
        if hi >= 0 and text[lo:hi].strip():
            best = (start, text[lo:hi].strip())
            break
    # `\boxed 5` is rare, so only the last one matters; it wins if it comes later.
    token = None
    for token in _BOX_TOKEN.finditer(text):
        pass
    if token is not None and (best is None or token.start() > best[0]):
        best = (token.start(), token.group(1).rstrip("."))
    return best


def _clean_phrase_answer(ans: str) -> str:
    ans = ans.strip()
    m = _INLINE_MATH.match(ans)
    if m:
        ans = m.group(1)
    # Sentence punctuation and stray math delimiters are not part of the answer.
    ans = ans.strip().rstrip(".").strip().strip("$").strip()
    if ans.startswith("\\(") and ans.endswith("\\)"):
        ans = ans[2:-2].strip()
    return ans.rstrip(".").strip()


def extract_answer(response: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{}``, ``\\boxed X``), else the
    last "final answer is X" / "Answer: X" phrase, else None. Never raises."""
    try:
        if not isinstance(response, str) or not response:
            return None
        boxed = _last_box(response)
        if boxed is not None:
            return boxed[1]
        phrase = None
        for phrase in _PHRASE.finditer(response):
            pass
        if phrase is not None:
            ans = _clean_phrase_answer(phrase.group(1))
            return ans or None
        return None
    except Exception:  # noqa: BLE001 - a grader must not crash the training loop
        return None


# ---------------------------------------------------------------- normalise
_TEXT_CMD = r"\\(?:text|textbf|textit|mbox|mathrm|mathbf)\s*"
_WHOLE_TEXT = re.compile(r"^" + _TEXT_CMD + r"\{([^{}]*)\}$")
# A \text{...} after something else is a unit (`5.4 \text{ cents}`, `864 \mbox{ inches}^2`),
# except connectives, which become list commas.
_CONNECTIVE = re.compile(_TEXT_CMD + r"\{\s*(?:and|or|,)\s*\}")
_UNIT_TEXT = re.compile(r"(?<=[\w}).)])\s*" + _TEXT_CMD + r"\{[^{}]*\}(?:\^\{?\d\}?)?")
_INNER_TEXT = re.compile(_TEXT_CMD + r"\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°|(?<=\d)\s*degrees?\b")
# `\\` (a row break) is matched first and kept, so `\\ ` is not read as `\ ` (a space).
_SIMPLE_DROPS = re.compile(
    r"(\\\\)|\\[,;:! ]|\\left\b|\\right\b|\\displaystyle|\\\$|\$|\\%|%"
)
_FRAC_ALIAS = re.compile(r"\\[dt]frac\b")
_FRAC_TWO_DIGITS = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_DIGIT_FIRST = re.compile(r"\\frac\s*(\d)\s*(?=\{)")
_FRAC_DIGIT_SECOND = re.compile(r"(\\frac\{[^{}]*\})\s*(\d)")
_SQRT_DIGIT = re.compile(r"\\sqrt\s*(\d)")
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])")
_VAR_PREFIX = re.compile(r"^(?:[A-Za-z](?:_\{?\w+\}?)?(?:\([A-Za-z]\))?)\s*(?:=|\\in\b)")
_MC_LETTER = re.compile(r"^\(([A-Ea-e])\)$")
_NUMPY = re.compile(r"\bnp\.(?=[a-z])")
# Whitespace goes, except after a command name before a letter (`\cdot x`, `\pi r`).
_WS = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|\s+")


def _strip_outer_text(s: str) -> str:
    m = _WHOLE_TEXT.match(s)
    return m.group(1).strip() if m else s


def normalize(answer: str) -> str:
    """Canonical string form of an answer; pure and linear-time."""
    s = answer.strip()
    if len(s) > _MAX_NORMALIZE:
        return s  # hostile length: skip the rewrites, only exact equality can pass
    s = _strip_outer_text(s.replace("\\!", ""))
    s = _CONNECTIVE.sub(",", s)
    s = _UNIT_TEXT.sub("", s)
    s = _INNER_TEXT.sub(r"\1", s)
    s = _DEGREES.sub("", s)
    s = _SIMPLE_DROPS.sub(r"\1", s)
    s = _FRAC_ALIAS.sub(r"\\frac", s)
    s = _FRAC_TWO_DIGITS.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_DIGIT_FIRST.sub(r"\\frac{\1}", s)
    s = _FRAC_DIGIT_SECOND.sub(r"\1{\2}", s)
    s = _SQRT_DIGIT.sub(r"\\sqrt{\1}", s)
    s = _NUMPY.sub("\\\\", s)
    s = _WS.sub(lambda m: m.group(1) + " " if m.group(1) else "", s)
    if s.count("=") == 1 or "\\in" in s[:12]:
        s = _VAR_PREFIX.sub("", s, count=1)
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s) if _is_one_number(s) else s
    s = s.rstrip(".")
    m = _MC_LETTER.match(s)
    return m.group(1).upper() if m else s


def _is_one_number(s: str) -> bool:
    # Only a lone `58,500` is a thousands-separated number; `2500,7500` stays a list.
    return _THOUSANDS.fullmatch(s.lstrip("-")) is not None


# ---------------------------------------------------------------- screen before sympy
_TOWER_FLAT = re.compile(r"\^\s*\{?\s*[\w.]+\s*\}?\s*\^")
_BIG_POWER = re.compile(r"\^\s*\{?\s*[+-]?\d{5,}")
_BIG_FACTORIAL = re.compile(r"\d{4,}\s*!")


def _exponent_depth(s: str) -> int:
    """Deepest nesting of superscript groups: `2^{x^{2}}` is 2."""
    depth = best = 0
    stack: list[bool] = []
    pending = False
    for ch in s:
        if ch == "^":
            pending = True
            best = max(best, depth + 1)
        elif ch == "{":
            stack.append(pending)
            depth += pending
            pending = False
        elif ch == "}":
            if stack and stack.pop():
                depth -= 1
        elif not ch.isspace():
            pending = False
    return best


def is_safe_for_sympy(s: str) -> bool:
    """Reject inputs that can hang sympy inside C code where no timeout can interrupt."""
    if len(s) > MAX_LEN or "\x00" in s:
        return False
    if "^" in s and (_TOWER_FLAT.search(s) or _BIG_POWER.search(s) or _exponent_depth(s) > 2):
        return False
    return not _BIG_FACTORIAL.search(s)
