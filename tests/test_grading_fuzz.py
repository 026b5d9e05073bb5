"""Property tests: grading never raises, returns the right types, and respects its time
limit on random and hostile responses."""
from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replaygrpo.grading import equivalent, extract_answer, grade

LIMIT = 2.0  # per-answer time limit given to grade()
# The limit plus a margin for pipe round trips and, after a kill, the replacement
# helper's start (~1 s, more on a loaded 2-core machine).
MARGIN = 4.0

FRAGMENTS = [
    "\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "\\{", "\\}", "\\\\", "$", "$$",
    "9^{9^{9^9}}", "\\frac{1}{0}", "\\frac", "\\sqrt", "x", "1", "0.5", "e", "i", "^",
    "_", "(", ")", "[", "]", ",", "=", "\\pi", "\\infty", "\\text{ cm}", "\\%",
    "The final answer is ", "Answer: ", "the answer is", "\x00", "\udc80", "\ud800",
    "é", "∞", "٣", " ", "\n", "10^{100000}", "99999!", "\\left(", "\\right)",
    "\\begin{pmatrix}", "\\end{pmatrix}", "&", ".", "-", "+", "/", "*", "\\cdot",
]  # fmt: skip

adversarial = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
# Text as a tokenizer would decode invalid UTF-8: lone surrogates.
undecodable = st.binary(max_size=200).map(lambda b: b.decode("utf-8", errors="surrogateescape"))
responses = st.one_of(st.text(max_size=300), adversarial, undecodable)
golds = st.one_of(st.sampled_from(["1", "\\frac{1}{2}", "(1,2)", "x^2+1", "025"]), adversarial)

SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _timed(fn, *args):  # noqa: ANN001, ANN202
    t0 = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - t0


@SETTINGS
@given(responses)
def test_extract_answer_total(response: str) -> None:
    out, took = _timed(extract_answer, response)
    assert out is None or isinstance(out, str)
    assert took < 1.0


@SETTINGS
@given(responses, golds)
def test_grade_total_and_bounded(response: str, gold: str) -> None:
    out, took = _timed(grade, response, gold, LIMIT)
    assert isinstance(out, bool)
    assert took < LIMIT + MARGIN


@SETTINGS
@given(adversarial, adversarial)
def test_equivalent_total_and_bounded(pred: str, gold: str) -> None:
    out, took = _timed(equivalent, pred, gold, LIMIT)
    assert isinstance(out, bool)
    assert took < LIMIT + MARGIN


@SETTINGS
@given(st.sampled_from(FRAGMENTS), st.integers(1, 6))
def test_nested_boxes(fragment: str, depth: int) -> None:
    response = "\\boxed{" * depth + fragment + "}" * depth
    out = extract_answer(response)
    assert out is None or isinstance(out, str)
    assert isinstance(grade(response, "1", LIMIT), bool)


def test_huge_inputs_are_linear_time() -> None:
    n = 10**6
    cases = [
        "\\boxed{" * (n // 7),  # all unbalanced
        "{" * n,
        "}" * n,
        "x" * n + "\\boxed{5}",
        "\\boxed{" + "1" * n + "}",  # a 10^6-digit answer
        "The final answer is " + "9" * n,
        "\\boxed{1}" * (n // 9) + "\\boxed{",
        "\x00" * n,
        "\udc80" * n,
    ]
    for response in cases:
        out, took = _timed(extract_answer, response)
        assert out is None or isinstance(out, str)
        assert took < 2.0, (response[:20], took)
        ok, took = _timed(grade, response, "5", LIMIT)
        assert isinstance(ok, bool)
        assert took < LIMIT + MARGIN, (response[:20], took)
    assert grade("x" * n + "\\boxed{5}", "5")
