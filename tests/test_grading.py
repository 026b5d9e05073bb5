"""Answer extraction, equivalence and the grading pool, on hand cases and real benchmarks."""
from __future__ import annotations

import json
import multiprocessing
import re
import threading
import time
from pathlib import Path

import pytest

from replaygrpo.grading import GradingPool, equivalent, extract_answer, grade, normalize
from replaygrpo.grading.equivalence import numerically_different

BENCH = Path("/work/shared/data/benchmarks")
# Genuinely slow for sympy (sums 9999 huge powers), yet it passes every cheap guard.
SLOW = r"\sum_{k=1}^{9999} k^{k}"


# ---------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{1}, then \boxed{2}", "2"),
        (r"\boxed 5$.", "5"),
        (r"\fbox{7}", "7"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{ 3 }", "3"),
        (r"ok \boxed{3} and then \boxed{4", "3"),  # unbalanced last box -> previous
        (r"\boxed{4", None),
        (r"\boxed{}", None),
        ("The final answer is $\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("the answer is 12. More text\nThe answer is 13.", "13"),
        ("Answer: 42.", "42"),
        ("**Final Answer:** 12", "12"),
        (r"\boxed{5} ... The final answer is 6", "5"),  # a box beats a phrase
        ("no answer here", None),
        ("", None),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


def test_extract_answer_survives_junk() -> None:
    assert extract_answer("\x00\\boxed{\x00 1}") == "\x00 1"
    assert extract_answer("\udc80\\boxed{2}\udc81") == "2"
    assert extract_answer(None) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------- equivalence
@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (r"0.5", r"\frac12"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"1/2", r"\frac 12"),
        (r"5.4", r"5.4 \text{ cents}"),
        (r"864", r"864 \mbox{ inches}^2"),
        (r"\frac{270}{7}", r"\frac{270}7\text{ degrees}"),
        (r"(-\infty,3]", r"(-\infty, 3]"),
        (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"84, 69", r"69$,$84"),  # olympiadbench multi-answer: a set
        (r"(6,3),(9,3),(9,5),(54,5)", r"(6,3),(9,3),(9,5),(54,5)"),
        ("25", "025"),  # AIME leading zero
        ("27", "27.0"),  # AMC float gold
        ("30", r"30^\circ"),
        (r"30^{\circ}", "30"),
        ("25", r"25\%"),
        (r"4.5 \times 10^{33}", "4.5e33"),  # Minerva
        (r"3.83\times10^{35}", "3.83e35"),
        ("-0.3333333", "-1./3"),
        ("4210_5", "4210_{5}"),
        ("10080", r"10,\!080"),
        ("32348", r"\$32,\!348"),
        ("E", r"\text{(E)}"),
        ("Evelyn", r"\text{Evelyn}"),
        ("[-2,7]", r"x \in [-2,7]"),
        ("5", "x = 5"),
        (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"),
        (r"(x+1)^2", r"x^2+2x+1"),
        (
            r"\begin{pmatrix}-1/3\\2/3\\5/3\end{pmatrix}",
            r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
        ),
        (r"6 - 5i", r"6-5i"),
        (r"\frac{x}{2}", r"\frac{1}{2}x"),
    ],
)
def test_equivalent_true(pred: str, gold: str) -> None:
    assert equivalent(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (r"\frac{1}{3}", "0.5"),
        ("(2,1)", "(1,2)"),
        ("(1,2)", "[1,2]"),
        ("26", "025"),
        ("4210_{8}", "4210_{5}"),  # math-verify alone says True: it drops the base
        ("27.01", "27.0"),
        (".35628", ".35625"),  # a tolerance of 1e-4 would accept this
        ("4.6e33", "4.5e33"),
        (r"3\sqrt{14}", r"3\sqrt{13}"),
        (r"(3,\frac{\pi}{3})", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"x^2+2x+2", r"(x+1)^2"),
        ("69", "69,84"),
        ("", "1"),
        (r"9^{9^{9^9}}", "1"),  # exponent tower: refused before sympy
        (r"10^{100000}", "1"),
        (r"\frac{1}{0}", "1"),
        ("1" * 5000, "1"),  # too long for sympy
    ],
)
def test_equivalent_false(pred: str, gold: str) -> None:
    assert not equivalent(pred, gold)


def test_numeric_disproof_never_contradicts_identities() -> None:
    # numerically_different returns True only for proven differences.
    same = [("(x+1)^2", "x^2+2x+1"), (r"\sqrt{8}", r"2\sqrt{2}"), (r"e^{i\pi}", "-1"),
            ("i^2", "-1"), (r"\sin(\pi/6)", r"\frac{1}{2}"), ("(3.75e9)+0", "3.75e9")]  # fmt: skip
    for a, b in same:
        assert not numerically_different(normalize(a), normalize(b)), (a, b)
    assert numerically_different("x^2+2x+2", "(x+1)^2")
    assert numerically_different(r"(1,\sqrt{2})", r"(1,\sqrt{3})")


def test_equivalent_time_limit_off_main_thread() -> None:
    out: list[bool] = []
    t0 = time.monotonic()
    thread = threading.Thread(target=lambda: out.append(equivalent(SLOW, "1", timeout=1.0)))
    thread.start()
    thread.join(30)
    assert out == [False]
    assert time.monotonic() - t0 < 1.0 + 10  # + helper start on a loaded 2-core box
    assert equivalent(r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}")  # helper replaced


def test_equivalent_inside_a_daemonic_pool_worker() -> None:
    # multiprocessing.Pool workers may not start the helper; an interval timer is used.
    with multiprocessing.get_context("spawn").Pool(1) as p:
        assert p.apply(equivalent, (r"(x+1)^2", "x^2+2x+1")) is True
        t0 = time.monotonic()
        assert p.apply(equivalent, (SLOW, "1", 1.0)) is False
        assert time.monotonic() - t0 < 1.0 + 2.0


def test_grade_never_raises() -> None:
    assert grade(r"\boxed{4}", "4") is True
    assert grade("no box", "4") is False
    assert grade(None, "4") is False  # type: ignore[arg-type]
    assert grade(r"\boxed{4}", 4.0) is True  # type: ignore[arg-type]


# ---------------------------------------------------------------- real benchmark golds
def _last_boxed(text: str) -> str:
    start = text.rindex("\\boxed")
    depth, lo = 0, text.index("{", start)
    for i in range(lo, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[lo + 1 : i]
    raise ValueError("unbalanced box")


def _golds(name: str) -> list[str]:
    """Gold answers per shared/data/README.md section 1."""
    rows = [json.loads(line) for line in (BENCH / name / "test.jsonl").open()]
    if name == "minerva_math":
        return [_last_boxed(r["solution"]) for r in rows]
    if name == "olympiadbench":
        return [r["final_answer"][0].strip("$") for r in rows]
    return [str(r["answer"]) for r in rows]  # amc23 answers are floats such as 27.0


NAMES = ["math500", "aime24", "amc23", "minerva_math", "olympiadbench"]


@pytest.fixture(scope="module")
def pool() -> GradingPool:
    with GradingPool(num_workers=2, timeout=5.0) as p:
        yield p


def _check_rate(name: str, responses: list[str], golds: list[str], results: list[bool]) -> None:
    failed = [(g, r) for g, r, ok in zip(golds, responses, results) if not ok]
    rate = 1 - len(failed) / len(golds)
    assert rate >= 0.99, f"{name}: {rate:.2%} pass; failures: {failed[:10]}"


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_golds_grade_against_themselves(name: str) -> None:
    golds = _golds(name)
    responses = ["Reasoning... so the answer is \\boxed{" + g + "}." for g in golds]
    _check_rate(name, responses, golds, [grade(r, g) for r, g in zip(responses, golds)])


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_golds_reformatted(name: str, pool: GradingPool) -> None:
    # The same answer written the way a model might: `\dfrac`, inline `$`, or
    # `\left( ... \right)` around a tuple; graded in the pool (some need sympy).
    golds = _golds(name)
    responses = []
    for i, g in enumerate(golds):
        paren = re.sub(r"^\((.*)\)$", r"\\left(\1\\right)", g)
        variant = [g.replace("\\frac", "\\dfrac"), f"${g}$", paren][i % 3]
        responses.append("\\boxed{" + variant + "}")
    _check_rate(name, responses, golds, pool.grade_many(responses, golds))


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_wrong_answers_rejected(name: str, pool: GradingPool) -> None:
    # Bump the first number of every gold that has one; all of these must be wrong.
    golds = [g for g in _golds(name) if re.search(r"\d", g)]
    wrong = [re.sub(r"\d+", lambda m: str(int(m.group()) + 7), g, count=1) for g in golds]
    results = pool.grade_many(["\\boxed{" + w + "}" for w in wrong], golds)
    accepted = [(w, g) for w, g, ok in zip(wrong, golds, results) if ok]
    assert not accepted


# ---------------------------------------------------------------- pool
def _sample() -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (BENCH / "math500" / "test.jsonl").open()][:60]
    responses, golds = [], []
    for i, row in enumerate(rows):
        sol, gold = row["solution"], row["answer"]
        wrong = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), gold, count=1)
        responses += [sol, sol.replace("\\boxed{" + gold + "}", "\\boxed{" + wrong + "}"), sol[:50]]
        golds += [gold] * 3
    return responses, golds


def test_pool_matches_in_process(pool: GradingPool) -> None:
    responses, golds = _sample()
    expected = [grade(r, g) for r, g in zip(responses, golds)]
    assert pool.grade_many(responses, golds) == expected
    with GradingPool(num_workers=0) as local:
        assert local.grade_many(responses, golds) == expected
    seen = sorted(i for i, _ in pool.grade_many_iter(responses, golds))
    assert seen == list(range(len(responses)))


def test_pool_kills_a_hanging_answer_and_goes_on() -> None:
    with GradingPool(num_workers=2, timeout=1.0) as p:
        p.wait_ready()
        responses = [f"\\boxed{{{SLOW}}}", r"\boxed{\frac{1}{\sqrt{3}}}", r"\boxed{(x+1)^2}"]
        golds = ["1", r"\frac{\sqrt{3}}{3}", "x^2+2x+1"]
        t0 = time.monotonic()
        assert p.grade_many(responses, golds) == [False, True, True]
        assert time.monotonic() - t0 < 1.0 + 3.0
        # The killed worker was replaced: the pool still grades sympy-bound answers.
        assert p.grade_many(responses[1:] * 4, golds[1:] * 4) == [True, True] * 4


def test_pool_rejects_mismatched_lengths(pool: GradingPool) -> None:
    with pytest.raises(ValueError):
        pool.grade_many(["a"], [])


def test_in_process_pool_starts_its_helper_up_front() -> None:
    """With num_workers=0 the math-verify helper starts with the pool, so its ~0.6 s start
    lands in the caller's setup rather than in whichever training step first needs it."""
    from replaygrpo.grading import pool as pool_mod

    with pool_mod._helper_lock:
        if pool_mod._helper is not None:
            pool_mod._helper.kill()
        pool_mod._helper = None
    with GradingPool(num_workers=0) as local:
        helper = pool_mod._helper
        assert helper is not None and helper.proc.is_alive()  # before any answer was graded
        assert local.grade_many([r"\boxed{\frac{1}{\sqrt{3}}}"], [r"\frac{\sqrt{3}}{3}"]) == [True]
        assert pool_mod._helper is helper  # the same process served it
