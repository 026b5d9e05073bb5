"""Pull the final answer out of a model response, and put answers in canonical form.

Departures from the usual "last ``\\boxed{}``" helpers (verl's ``last_boxed_only_string``,
the Qwen2.5-Math ``extract_answer``):

* Brace matching is one linear pass over the braces after the first box, so a
  10^6-character response or thousands of unbalanced ``\\boxed{`` cost O(n), not O(n^2).
* An unbalanced or empty last box falls back to the previous balanced, non-empty box,
  rather than returning garbage up to the end of the text.
* With no box at all, what is graded depends on ``fallback`` (a grader setting, see
  ``settings.py``): the last "final answer is X" / "the answer is X" / "Answer: X"
  (``phrase``); that, else the last ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` span (``math``,
  the default); or that, else the last number in the text (``last_number``, the
  Qwen2.5-Math harness's rule); ``none`` grades only boxes.

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
_INLINE_MATH = re.compile(r"^\$+((?:\\\$|[^$])+)\$+")  # `$\$32$`: an escaped dollar inside
_DOLLARS = re.compile(r"(?<!\\)\$+")  # `$` or `$$` delimiters, not an escaped `\$`
_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")
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


# What may stand between boxes that together give one answer: `\boxed{2}, \boxed{3}`,
# `\boxed{x=1} \quad \text{and} \quad \boxed{y=2}`; any other word keeps them apart.
_MAX_JOINED = 64  # more boxes than this in a row are not one answer
_BOX_GAP = re.compile(r"(?:\s|[,;$]|\\[,;]|\\q?quad\b|\\[()]|\\text\{[^{}]*\}|\band\b|\bor\b)*")


def _last_box(text: str, join: bool = False) -> tuple[int, str] | None:
    """Position and content of the last balanced, non-empty box of either form; with
    `join`, the boxes just before it that only connectives or \\text{} separate come along,
    comma-joined."""
    best: tuple[int, str] | None = None
    spans = [(start, lo, hi) for start, lo, hi in _box_spans(text) if hi >= 0 and text[lo:hi].strip()]
    if spans:
        start, lo, hi = spans[-1]
        parts = [text[lo:hi].strip()]
        for prev in reversed(spans[-_MAX_JOINED:-1]) if join else ():
            gap = text[prev[2] + 1:start]
            if len(gap) > 80 or _BOX_GAP.fullmatch(gap) is None:
                break
            parts.append(text[prev[1]:prev[2]].strip())
            start = prev[0]
        best = (spans[-1][0], ", ".join(reversed(parts)))
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


def _last_math(text: str) -> str | None:
    """Content of the last `$..$`, `$$..$$`, `\\(..\\)` or `\\[..\\]` span (rfind: linear)."""
    best: tuple[int, str] | None = None
    for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
        j = text.rfind(closer)
        i = text.rfind(opener, 0, j) if j >= 0 else -1
        if i >= 0 and (best is None or j > best[0]):
            best = (j, text[i + 2:j])
    dollars = [m.span() for m in _DOLLARS.finditer(text)]
    if len(dollars) >= 2 and (best is None or dollars[-1][0] > best[0]):
        best = (dollars[-1][0], text[dollars[-2][1]:dollars[-1][0]])
    if best is None:
        return None
    ans = best[1].strip().rstrip(".").strip()
    return ans or None


def _last_number(text: str) -> str | None:
    found = _LAST_NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def extract_answer(response: str, fallback: str = "phrase", join_boxes: bool = False) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{}``, ``\\boxed X``); with
    ``join_boxes``, the boxes just before it that only connectives separate (``\\boxed{2},
    \\boxed{3}``) are joined with commas. Without a box, the ``fallback`` (none, phrase,
    math or last_number; see the module docstring), else None. Never raises."""
    try:
        if not isinstance(response, str) or not response:
            return None
        boxed = _last_box(response, join_boxes)
        if boxed is not None:
            return boxed[1]
        if fallback == "none":
            return None
        phrase = None
        for phrase in _PHRASE.finditer(response):
            pass
        if phrase is not None:
            ans = _clean_phrase_answer(phrase.group(1))
            if ans:
                return ans
        if fallback == "math":
            return _last_math(response)
        if fallback == "last_number":
            return _last_number(response)
        return None
    except Exception:  # noqa: BLE001 - a grader must not crash the training loop
        return None


# ---------------------------------------------------------------- normalise
_TEXT_CMD = r"\\(?:text|textbf|textit|mbox|mathrm|mathbf)\s*"
_WHOLE_TEXT = re.compile(r"^" + _TEXT_CMD + r"\{([^{}]*)\}$")
# LaTeX spacing reads as a plain space first, so `1.6\,\text{cm}` and `1.6\ \mathrm{m/s}`
# lose their unit like `1.6 \text{cm}`. `\\` (a row break) is matched first and kept.
_SPACING = re.compile(r"(\\\\)|\\[,;: ]|~|\\q?quad\b|\\enspace\b")
_EMPTYSET = re.compile(r"\\varnothing\b|\\\{\s*\\\}")
_PERCENT_WORD = re.compile(r"\s*\bper\s?cent\b")
# A \text{...} after something else is a unit (`5.4 \text{ cents}`, `864 \mbox{ inches}^2`,
# `\mathrm{m}/\mathrm{s}`), except connectives, which become list commas, and `\mathrm{e}`.
_CONNECTIVE = re.compile(_TEXT_CMD + r"\{\s*(?:and|or|,)\s*\}")
_UNIT_ONE = _TEXT_CMD + r"\{(?!\s*[ei]\s*\})[^{}]*\}(?:\^\{?-?\d\}?)?"
_UNIT_TEXT = re.compile(r"(?<=[\w}).)])\s*" + _UNIT_ONE + r"(?:\s*(?:(?:/|\\cdot)\s*)?" + _UNIT_ONE + r")*")
# A bare unit word after a plain number (`45 minutes`, `1.6 cm`, `20 km/h`); one letter
# (`2 x`) may be a variable, so it stays.
_BARE_UNIT = re.compile(r"^([+-]?(?:\d[\d.,]*|\\frac\{\d+\}\{\d+\})(?:\\times ?10\^\{?-?\d+\}?)?)"
                        r"\s+[A-Za-z]{2,}(?:/[A-Za-z]+)?(?:\^\{?\d\}?)?(?:\s+[A-Za-z]{2,})*$")
_AND = re.compile(r"(?:\s*,)?\s+and\s+")
_COMMAS = re.compile(r",(?:\s*,)+")
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
_SPACED_COMMA = re.compile(r",\s")
_BANG_COMMA = re.compile(r"(?<=\d),\\!\s*(?=\d{3})")
_MC_LETTER = re.compile(r"^\(([A-Ea-e])\)$")
_NUMPY = re.compile(r"\bnp\.(?=[a-z])")
# Whitespace goes, except after a command name or a one-character subscript before a
# letter (`\cdot x`, `\pi r`, `F_k F_{n}`: `F_kF` would read as one subscript `kF`).
_WS = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|([_^][A-Za-z0-9])\s+(?=[A-Za-z\\])|\s+")


def _strip_outer_text(s: str) -> str:
    m = _WHOLE_TEXT.match(s)
    return m.group(1).strip() if m else s


def normalize(answer: str) -> str:
    """Canonical string form of an answer; pure and linear-time."""
    s = answer.strip()
    if len(s) > _MAX_NORMALIZE:
        return s  # hostile length: skip the rewrites, only exact equality can pass
    s = _BANG_COMMA.sub(",", s)  # MATH's thousands `10,\! 080` is one number, whatever the spacing
    s = _strip_outer_text(s.replace("\\!", "").replace("{,}", ","))
    s = _SPACING.sub(lambda m: m.group(1) or " ", s)
    s = _EMPTYSET.sub(r"\\emptyset", s)
    s = _PERCENT_WORD.sub(r"\\%", s)
    s = _CONNECTIVE.sub(",", s)
    s = _UNIT_TEXT.sub("", s)
    s = _INNER_TEXT.sub(r"\1", s)
    s = _COMMAS.sub(",", _AND.sub(",", s))
    s = _BARE_UNIT.sub(r"\1", s.strip())
    s = _DEGREES.sub("", s)
    s = _SIMPLE_DROPS.sub(r"\1", s)
    s = _FRAC_ALIAS.sub(r"\\frac", s)
    s = _FRAC_TWO_DIGITS.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_DIGIT_FIRST.sub(r"\\frac{\1}", s)
    s = _FRAC_DIGIT_SECOND.sub(r"\1{\2}", s)
    s = _SQRT_DIGIT.sub(r"\\sqrt{\1}", s)
    s = _NUMPY.sub("\\\\", s)
    listy = _SPACED_COMMA.search(s) is not None  # `8, 221` is a list; `8,221` may be a number
    s = _WS.sub(lambda m: (m.group(1) or m.group(2)) + " " if m.group(1) or m.group(2) else "", s)
    if s.count("=") == 1 or "\\in" in s[:12]:
        s = _VAR_PREFIX.sub("", s, count=1)
    s = _THOUSANDS.sub(lambda m: m.group(1).replace(",", ""), s) if not listy and _is_one_number(s) else s
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
