"""Benchmark: replaygrpo.grading.GradingPool against plain serial math-verify.

Builds k responses per MATH500 problem from the real reference solutions, keeping the
final ``\\boxed{}`` (sometimes reformatted), replacing it with a perturbed wrong answer,
or cutting the response off before the box. Then times

  (a) math-verify ``verify(parse(gold), parse(response))``, serially in this process,
      with its default (signal-based) timeouts;
  (b) ``GradingPool(num_workers=os.cpu_count()).grade_many``;
  (c) ``GradingPool(num_workers=0)``: the same grading on one core;

and prints solutions/s both ways, the speed-up, the agreement between (a) and (b), and
the accuracy of each against the construction labels.

    python scripts/bench_grading.py [--n 8000] [--k 16] [--out summary.md]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

MATH500 = Path("/work/shared/data/benchmarks/math500/test.jsonl")


def last_box_span(text: str) -> tuple[int, int] | None:
    """Start and end of the last ``\\boxed{...}`` content in a reference solution."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, lo = 0, start + len("\\boxed")
    for i in range(lo, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return lo + 1, i
    return None


def perturb(answer: str, rng: random.Random) -> str:
    """A wrong answer that looks like the right one: bump one number, else add 1."""
    numbers = list(re.finditer(r"\d+", answer))
    if numbers:
        m = rng.choice(numbers)
        bumped = str(int(m.group()) + rng.randint(1, 9))
        return answer[: m.start()] + bumped + answer[m.end() :]
    return answer + "+1"


def reformat(answer: str, rng: random.Random) -> str:
    """The right answer written the way a model might write it."""
    choice = rng.randrange(4)
    if choice == 0:
        return answer.replace("\\frac", "\\dfrac")
    if choice == 1:
        return answer.replace(" ", "")
    if choice == 2 and re.fullmatch(r"-?\d+", answer):
        return answer + ".0"
    return answer


def build(n: int, k: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(responses, golds, labels) with labels in {"correct", "wrong", "no_box"}."""
    rng = random.Random(seed)
    rows = [json.loads(line) for line in MATH500.open()]
    responses, golds, labels = [], [], []
    for i in range(n):
        row = rows[(i // k) % len(rows)]
        sol, gold = row["solution"], row["answer"]
        span = last_box_span(sol)
        assert span is not None
        lo, hi = span
        roll = rng.random()
        if roll < 0.5:
            new, label = reformat(sol[lo:hi], rng), "correct"
        elif roll < 0.97:
            new, label = perturb(sol[lo:hi], rng), "wrong"
        else:
            responses.append(sol[: lo - len("\\boxed{")])
            golds.append(gold)
            labels.append("no_box")
            continue
        responses.append(sol[:lo] + new + sol[hi:])
        golds.append(gold)
        labels.append(label)
    return responses, golds, labels


def run_math_verify(responses: list[str], golds: list[str]) -> list[bool]:
    from math_verify import parse, verify

    return [bool(verify(parse("$" + g + "$"), parse(r))) for r, g in zip(responses, golds)]


def why(response: str, gold: str) -> str:
    """Which of our tiers decided this response, and on what strings."""
    from replaygrpo.grading import extract_answer
    from replaygrpo.grading.equivalence import fast_equivalent, numerically_different
    from replaygrpo.grading.extract import is_safe_for_sympy, normalize

    ans = extract_answer(response)
    if ans is None:
        return "ours: no answer extracted (math-verify falls back to any number in the text)"
    p, g = normalize(ans), normalize(gold)
    if (fast := fast_equivalent(p, g)) is not None:
        tier = f"string/number fast path ({fast})"
    elif not (is_safe_for_sympy(p) and is_safe_for_sympy(g)):
        tier = "hostile-input guard (False)"
    elif numerically_different(p, g):
        tier = "numeric disproof (False)"
    else:
        tier = "math-verify in a worker"
    return f"ours: extracted {ans!r}, normalised {p!r} vs {g!r}, decided by {tier}"


def sent_to_workers(responses: list[str], golds: list[str]) -> tuple[int, int]:
    """How many responses the cheap tiers left undecided, and how many distinct pairs."""
    from replaygrpo.grading import extract_answer
    from replaygrpo.grading.equivalence import prepare

    undecided = []
    for r, g in zip(responses, golds):
        ans = extract_answer(r)
        if ans is not None:
            decided, p, ng = prepare(ans, g)
            if decided is None:
                undecided.append((p, ng))
    return len(undecided), len(set(undecided))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8000, help="number of responses")
    ap.add_argument("--k", type=int, default=16, help="responses per problem")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-answer limit (s)")
    ap.add_argument("--out", type=Path, default=None, help="write a markdown summary here")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # math-verify warns per timeout; keep output readable

    from replaygrpo.grading import GradingPool

    cores = os.cpu_count() or 1
    responses, golds, labels = build(args.n, args.k)
    load = os.getloadavg()[0]
    print(f"cores: {cores}  responses: {len(responses)}  k: {args.k}  load: {load:.1f}")

    t0 = time.perf_counter()
    pool = GradingPool(num_workers=cores, timeout=args.timeout)
    pool.wait_ready()
    t1 = time.perf_counter()
    ours = pool.grade_many(responses, golds)
    t2 = time.perf_counter()
    pool.close()
    start_s, ours_s = t1 - t0, t2 - t1

    t3 = time.perf_counter()
    with GradingPool(num_workers=0, timeout=args.timeout) as local:
        local_ours = local.grade_many(responses, golds)
    local_s = time.perf_counter() - t3

    t4 = time.perf_counter()
    base = run_math_verify(responses, golds)
    base_s = time.perf_counter() - t4

    n = len(responses)
    agree = sum(a == b for a, b in zip(ours, base)) / n
    truth = [lab == "correct" for lab in labels]
    acc_ours = sum(a == t for a, t in zip(ours, truth)) / n
    acc_base = sum(b == t for b, t in zip(base, truth)) / n
    undecided, distinct = sent_to_workers(responses, golds)
    lines = [
        f"- machine cores: {cores} (1-min load average {load:.1f} at start: other work"
        " on the machine slows both sides)",
        f"- responses: {n} (k={args.k}; {labels.count('correct')} correct, "
        f"{labels.count('wrong')} perturbed, {labels.count('no_box')} cut before the box)",
        f"- (a) math-verify serial: {base_s:.1f} s, {n / base_s:.0f} solutions/s",
        f"- (b) GradingPool({cores}) grade_many: {ours_s:.1f} s, {n / ours_s:.0f} solutions/s"
        f" (+{start_s:.1f} s worker start; {n / (ours_s + start_s):.0f} solutions/s with it)",
        f"- (c) GradingPool(0), cheap tiers in this process + one math-verify helper: "
        f"{local_s:.1f} s, {n / local_s:.0f} solutions/s (same verdicts as (b): "
        f"{local_ours == ours})",
        f"- speed-up (b)/(a): {base_s / ours_s:.1f}x; with worker start "
        f"{base_s / (ours_s + start_s):.1f}x",
        f"- left to math-verify by our cheap tiers: {undecided} responses, "
        f"{distinct} distinct (answer, gold) pairs",
        f"- agreement (a) vs (b): {agree:.2%}",
        f"- matches construction labels: (a) {acc_base:.2%}, (b) {acc_ours:.2%}",
    ]
    diffs = [i for i in range(n) if ours[i] != base[i]]
    kinds = Counter((labels[i], base[i]) for i in diffs)
    lines.append(
        "- disagreements by (label, math-verify verdict): "
        + (", ".join(f"{k[0]}/{k[1]}: {v}" for k, v in kinds.most_common()) or "none")
    )
    per_kind: Counter = Counter()
    examples = []
    for i in diffs:  # at most 2 examples per kind, so rare kinds are not crowded out
        kind = (labels[i], base[i])
        if per_kind[kind] == 2 or len(examples) == 8:
            continue
        per_kind[kind] += 1
        examples.append(
            f"- gold {golds[i]!r}, label {labels[i]}: math-verify {base[i]}, ours {ours[i]}; "
            f"{why(responses[i], golds[i])}"
        )
    print("\n".join(lines))
    print(f"disagreements: {len(diffs)}")
    print("\n".join(examples))
    if args.out:
        body = ["# Grading benchmark", "", *lines, "", f"## Disagreements ({len(diffs)})", ""]
        args.out.write_text("\n".join(body + examples) + "\n")


if __name__ == "__main__":
    main()
