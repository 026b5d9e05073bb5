"""The toy lab's task: procedurally generated arithmetic with difficulty levels.

Answers are graded through the same \\boxed{} extraction and equivalence as the real
benchmarks. The split is by a hash of the question, so train and test never share a
problem and every seed sees the same partition of the problem space.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from replaygrpo.data.problem import Problem


def _sum(*ranges: tuple[int, int]) -> Callable[[random.Random], tuple[str, int]]:
    def make(rng: random.Random) -> tuple[str, int]:
        terms = [rng.randint(lo, hi) for lo, hi in ranges]
        return " + ".join(map(str, terms)), sum(terms)

    return make


def _diff(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"{max(a, b)} - {min(a, b)}", abs(a - b)


LEVELS: dict[int, Callable[[random.Random], tuple[str, int]]] = {
    1: _sum((0, 9), (0, 9)),
    2: _sum((10, 99), (0, 9)),
    3: _sum((10, 99), (10, 99)),
    4: _diff,
    5: _sum((10, 99), (10, 99), (10, 99)),
}


def _is_test(question: str) -> bool:
    # 1 in 8 of the problem space is held out; stable across seeds and Python versions.
    return hashlib.sha1(question.encode()).digest()[0] % 8 == 0


def make_split(levels: list[int], n: int, seed: int, test: bool) -> list[Problem]:
    """n problems with levels drawn uniformly from `levels`, from the train or test side of the split."""
    rng = random.Random(f"toy-{seed}-{'test' if test else 'train'}")
    out: list[Problem] = []
    while len(out) < n:
        level = rng.choice(levels)
        expr, answer = LEVELS[level](rng)
        if _is_test(expr) != test:
            continue
        out.append(Problem(id=f"L{level}-{len(out)}", question=f"{expr} = ?", gold=str(answer), source="toy"))
    return out
