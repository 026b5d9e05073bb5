"""The toy lab's task: procedurally generated arithmetic with difficulty levels.

Answers are graded through the same \\boxed{} extraction and equivalence as the real
benchmarks. The split is by a hash of the question, so train and test never share a
problem and every seed sees the same partition of the problem space.

Levels 1-5 are answered directly (`\\boxed{57}`). Level 6, a sum of four 2-digit
numbers, is answered with written partial sums (`12+34=46 46+56=102 102+78=180
\\boxed{180}`, about 40 tokens): the supervised warm start teaches that form, so
responses there are long enough for length, truncation and AES to mean something, and
an early slip in a partial sum spoils the answer.
"""
from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

from replaygrpo.data.problem import Problem


@dataclass(frozen=True)
class Level:
    ranges: tuple[tuple[int, int], ...]
    """Inclusive range of each term."""
    diff: bool = False
    """Two terms, larger minus smaller (else a sum of all terms)."""
    steps: bool = False
    """The worked answer writes each partial sum before the boxed total."""

    def terms(self, rng: random.Random) -> tuple[int, ...]:
        return tuple(rng.randint(lo, hi) for lo, hi in self.ranges)

    def space(self) -> int:
        """Number of term tuples (an upper bound on distinct questions)."""
        n = 1
        for lo, hi in self.ranges:
            n *= hi - lo + 1
        return n


LEVELS: dict[int, Level] = {
    1: Level(((0, 9), (0, 9))),
    2: Level(((10, 99), (0, 9))),
    3: Level(((10, 99), (10, 99))),
    4: Level(((10, 99), (10, 99)), diff=True),
    5: Level(((10, 99),) * 3),
    6: Level(((10, 99),) * 4, steps=True),
}
ENUMERABLE = 10_000
"""Levels with at most this many term tuples are listed whole for the eval set, not sampled."""


def _question(level: Level, terms: tuple[int, ...]) -> tuple[str, int]:
    if level.diff:
        a, b = max(terms), min(terms)
        return f"{a} - {b} = ?", a - b
    return " + ".join(map(str, terms)) + " = ?", sum(terms)


def _is_test(question: str) -> bool:
    # 1 in 8 of the problem space is held out; stable across seeds and Python versions.
    # The hash is of the expression without " = ?", as the split has always been.
    return hashlib.sha1(question.removesuffix(" = ?").encode()).digest()[0] % 8 == 0


def level_of(problem: Problem) -> int:
    """The level of a toy problem, from its id (`L<level>-<index>`)."""
    return int(problem.id.split("-", 1)[0][1:])


def worked_answer(problem: Problem) -> str:
    """The supervised target for a toy problem: the boxed answer, after partial sums at a step level."""
    if not LEVELS[level_of(problem)].steps:
        return f"\\boxed{{{problem.gold}}}"
    terms = [int(t) for t in problem.question.removesuffix(" = ?").split(" + ")]
    parts, total = [], terms[0]
    for t in terms[1:]:
        parts.append(f"{total}+{t}={total + t}")
        total += t
    return " ".join(parts) + f" \\boxed{{{total}}}"


def make_split(levels: list[int], n: int, seed: int, test: bool) -> list[Problem]:
    """n problems with levels drawn uniformly from `levels`, from the train or test side of the split.

    Problems may repeat (small levels have few distinct questions); the eval uses `eval_set`.
    """
    rng = random.Random(f"toy-{seed}-{'test' if test else 'train'}")
    out: list[Problem] = []
    while len(out) < n:
        level = rng.choice(levels)
        question, answer = _question(LEVELS[level], LEVELS[level].terms(rng))
        if _is_test(question) != test:
            continue
        out.append(Problem(id=f"L{level}-{len(out)}", question=question, gold=str(answer), source="toy"))
    return out


def _distinct_test(level: int, want: int) -> list[tuple[str, int]]:
    """Up to `want` distinct test-side questions of a level: all of a small level, else a seeded sample."""
    spec = LEVELS[level]
    rng = random.Random(f"toy-eval-{level}")
    if spec.space() <= ENUMERABLE:
        found = dict(_question(spec, t) for t in itertools.product(*(range(lo, hi + 1) for lo, hi in spec.ranges)))
        items = sorted((q, a) for q, a in found.items() if _is_test(q))
        rng.shuffle(items)
        return items[:want]
    seen: dict[str, int] = {}
    while len(seen) < want:  # a large space: collisions are rare
        q, a = _question(spec, spec.terms(rng))
        if _is_test(q):
            seen.setdefault(q, a)
    return list(seen.items())


def eval_set(levels: list[int], n: int) -> list[Problem]:
    """About n DISTINCT held-out problems, shared out evenly over `levels`.

    A level with fewer distinct test questions than its share gives all it has and the
    rest goes to the other levels, so the total is n unless every level runs out. Problems
    come grouped by level, in the order of `levels` (similar lengths batch together).
    """
    levels = sorted(set(levels), key=levels.index)
    pools = {lvl: _distinct_test(lvl, n) for lvl in levels}
    share = dict.fromkeys(levels, 0)
    left = n
    while left > 0:  # water-filling: one at a time round the levels that still have questions
        open_levels = [lvl for lvl in levels if share[lvl] < len(pools[lvl])]
        if not open_levels:
            break
        for lvl in open_levels[:left]:
            share[lvl] += 1
            left -= 1
    return [Problem(id=f"L{lvl}-{i}", question=q, gold=str(a), source="toy")
            for lvl in levels for i, (q, a) in enumerate(pools[lvl][:share[lvl]])]
