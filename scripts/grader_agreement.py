"""Grader agreement study: the project's grader (default and qwen_math profiles) against plain
math-verify, on the real benchmark golds rewritten the ways models write them.

Every gold of the five benchmark files (shared/data/benchmarks) is rewritten by rules
that keep the answer (units after LaTeX spaces, percents, decimals, thousands
separators, ``x =``, reordered sets, ``\\left(``/``\\right)`` intervals, choice letters,
answers without a box) or break it on purpose (controls: off by one, a missing list
item, an interval end flipped, another letter). Each rewrite carries the verdict a
human marker would give it; rewrites a marker could mark either way (a fraction rounded
to three decimals) are labelled "ambiguous" and kept out of the error counts. Each
response is graded by

  - ``default``: ``GradingPool`` under the default profile (with OlympiadBench's tolerance);
  - ``qwen_math``: the same under the harness-compatible profile;
  - ``math-verify``: ``verify(parse("$gold$"), parse(response))``, plain, its own timeouts;

and every disagreement between the default grader and math-verify is classified by who
matches the marker. With ``--mv-tests DIR`` (a Math-Verify checkout's ``tests/``) the
labelled real-output cases there (``test_numina_cases.py``, ``test_open_thoughts.py``,
``test_yujianll.py``) are also graded, read from that checkout at run time (the
committed study used huggingface/Math-Verify at commit 5d148cf; its labels are
math-verify's expected outputs, not a marker's).

    python scripts/grader_agreement.py [--out docs/grader_agreement.md] [--mv-tests DIR]
"""
from __future__ import annotations

import argparse
import ast
import logging
import os
import platform
import re
import sys
import time
import zlib
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
BENCHMARKS = ("math500", "aime24", "amc23", "minerva_math", "olympiadbench")
UNITS = (r"\,\text{cm}", r"\ \text{cm}", r"\;\mathrm{kg}", r"\ \mathrm{m/s}", r" \mathrm{~cm}", r"\,\text{J}")
AMBIGUOUS = None  # label of a rewrite a marker could accept or reject


def _num(gold: str) -> tuple[Fraction, bool] | None:
    from replaygrpo.grading.extract import normalize
    from replaygrpo.grading.numbers import to_number

    return to_number(normalize(gold))


def _top_items(s: str) -> list[str]:
    from replaygrpo.grading.lists import split_top

    return [x.strip() for x in split_top(s)]


def _pick(gold: str, options: tuple[str, ...]) -> str:
    return options[zlib.crc32(gold.encode()) % len(options)]  # deterministic, spread over options


def _decimal(x: Fraction) -> str | None:
    """Exact decimal of x if it terminates (at most 8 places), else None."""
    for places in range(9):
        scaled = x * 10**places
        if scaled.denominator == 1:
            s = f"{abs(scaled.numerator):0{places + 1}d}"
            body = s if places == 0 else s[:-places] + "." + s[-places:]
            return ("-" if x < 0 else "") + body
    return None


_ASKS_PERCENT = re.compile(r"what percent|percentage|as a percent|in percent", re.IGNORECASE)


def rewrites(gold: str, unit: str | None, question: str = "", tol: float | None = None
             ) -> list[tuple[str, str, bool | None]]:
    """(kind, response, marker's verdict) for one gold."""
    box = lambda a: f"Therefore the final answer is $\\boxed{{{a}}}$."  # noqa: E731
    out: list[tuple[str, str, bool | None]] = [("verbatim", box(gold), True)]
    if "$" not in gold.replace("\\$", ""):  # a gold with a stray `$` (minerva 72) cannot sit in $..$
        out += [("no box: answer phrase", f"The answer is ${gold}$.", True),
                ("no box: last math", f"Putting everything together, we get ${gold}$.", True)]
    num = _num(gold)
    items = _top_items(gold)
    choice = re.fullmatch(r"\\text\{\(([A-E])\)\}|\(([A-E])\)", gold)
    if num is not None:
        value, exact = num
        if "%" not in gold:  # `8\%\,\text{cm}` is no answer anyone writes
            out.append(("unit after a LaTeX space", box(gold + _pick(gold, UNITS)), True))
        out.append(("x = prefix", box(f"x = {gold}"), True))
        if unit and unit.strip("$") not in ("", "%"):
            out.append(("the problem's own unit", box(f"{gold}\\ \\text{{{unit.strip('$')}}}"), True))
        frac_of_one = _decimal(value / 100)  # normalize() already read `25\\%` as 25
        if (unit == "%" or gold.endswith("\\%")) and frac_of_one:
            # `50\%` -> 0.5 is the same quantity; for "r %" (the unit outside the gold) 0.042 is not r
            out.append(("percent as a fraction of 1", box(frac_of_one), True if "%" in gold else AMBIGUOUS))
            out.append(("percent sign", box(gold if gold.endswith("\\%") else gold + "\\%"), True))
        elif _ASKS_PERCENT.search(question) and frac_of_one:
            out.append(("percent sign", box(gold + "\\%"), True))
            # `0.25` for "what percent": right value, not the form asked for
            out.append(("percent question answered as a fraction of 1", box(frac_of_one), AMBIGUOUS))
        if value.denominator == 1 and exact:  # `4.5e33` is a measurement, not an integer
            n = value.numerator
            out.append(("integer written as a decimal", box(f"{n}.0"), True))
            if abs(n) >= 10000:
                out.append(("thousands separators", box(f"{n:,}"), True))
                out.append(("thousands separators {,}", box(f"{n:,}".replace(",", "{,}")), True))
            out.append(("control: off by one", box(str(n + 1)), False))
        else:
            dec = _decimal(value)
            if exact and dec is not None:
                out.append(("fraction as its exact decimal", box(dec), True))
            elif exact:
                out.append(("fraction rounded to 3 places", box(f"{float(value):.3f}"), AMBIGUOUS))
            if exact:
                out.append(("\\dfrac and a/b", box(f"\\dfrac{{{value.numerator}}}{{{value.denominator}}}"), True))
                out.append(("\\dfrac and a/b", box(f"{value.numerator}/{value.denominator}"), True))
            elif dec is not None and "e" not in gold.lower() and "\\times" not in gold:
                out.append(("trailing zero", box(dec + "0" if "." in dec else dec + ".0"), True))
            off = _decimal(value * Fraction(101, 100) if tol is None else value + 3 * Fraction(str(tol)))
            if off:
                out.append(("control: 1% off (3x the tolerance where given)", box(off), False))
        m = re.fullmatch(r"(-?[\d.]+)[eE]([+-]?\d+)", gold.strip())
        if m:
            out.append(("scientific notation", box(f"{m[1]} \\times 10^{{{int(m[2])}}}"), True))
    elif choice:
        letter = choice[1] or choice[2]
        out.append(("choice letter", box(letter), True))
        out.append(("choice letter", box(f"\\textbf{{({letter})}}"), True))
        out.append(("control: other letter", box("A" if letter != "A" else "B"), False))
    elif len(items) >= 2 and not re.fullmatch(r"[(\[].*[)\]]", gold.strip()):
        out.append(("list reordered", box(", ".join(reversed(items))), True))
        out.append(("list as a set in braces", box("\\{" + ", ".join(items) + "\\}"), True))
        out.append(("list with 'and'", box(", ".join(items[:-1]) + ", \\text{and } " + items[-1]), True))
        if len(set(items)) == len(items):  # `-2` for `-2,-2`: missing or merely not repeated?
            out.append(("control: list item missing", box(", ".join(items[:-1])), False))
    elif re.fullmatch(r"[(\[].*[)\]]", gold.strip()) and len(_top_items(gold.strip()[1:-1])) == 2:
        inner = _top_items(gold.strip()[1:-1])
        lo, hi = gold.strip()[0], gold.strip()[-1]
        out.append(("\\left( \\right) and spaces", box(f"\\left{lo} {inner[0]} , \\; {inner[1]} \\right{hi}"), True))
        if "\\infty" not in inner[1]:  # flip the closing end; else the opening one
            out.append(("control: interval end flipped", box(f"{lo}{inner[0]}, {inner[1]}{')' if hi == ']' else ']'}"),
                        False))
        elif "\\infty" not in inner[0]:
            out.append(("control: interval end flipped", box(f"{'(' if lo == '[' else '['}{inner[0]}, {inner[1]}{hi}"),
                        False))
    text = re.fullmatch(r"\\text\{([A-Za-z ]+)\}", gold.strip())
    if text:
        out.append(("text without \\text{}", box(text[1]), True))
    if gold.strip() in ("\\emptyset", "\\varnothing", "\\{\\}"):
        out.append(("empty set spelled differently", box("\\varnothing" if "empty" in gold else "\\emptyset"), True))
    return out


def load_cases(root: Path) -> list[dict]:
    from replaygrpo.data.benchmarks import load_benchmark, read_benchmark_file

    cases = []
    for name in BENCHMARKS:
        units = {}
        if name == "olympiadbench":  # the `unit` field is not part of the gold; a model writes it
            units = {str(r["id"]): r.get("unit") for _, r in read_benchmark_file(root / name / "test.jsonl")}
        for p in load_benchmark(name, root):
            for kind, response, label in rewrites(p.gold, units.get(p.id), p.question, p.tolerance):
                cases.append({"bench": name, "id": p.id, "gold": p.gold, "tol": p.tolerance, "kind": kind,
                              "response": response, "label": label})
    return cases


def grade_project(cases: list[dict], profile: str, workers: int) -> list[bool]:
    from replaygrpo.grading import GradingPool, grader_settings

    with GradingPool(workers, 5.0, grader_settings(profile)) as pool:
        return pool.grade_many([c["response"] for c in cases], [c["gold"] for c in cases], [c["tol"] for c in cases])


def grade_math_verify(cases: list[dict]) -> list[bool]:
    from math_verify import parse, verify

    out = []
    for c in cases:
        try:
            out.append(bool(verify(parse("$" + c["gold"] + "$"), parse(c["response"]))))
        except Exception:  # noqa: BLE001 - a crash is a rejection, as in a reward function
            out.append(False)
    return out


def mv_labelled_cases(tests: Path) -> list[dict]:
    """(gold, prediction, expected) triples of Math-Verify's real-output test files, read from a checkout."""
    cases = []
    for fname in ("test_numina_cases.py", "test_open_thoughts.py", "test_yujianll.py"):
        tree = ast.parse((tests / fname).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "parametrize":
                for elt in node.args[1].elts:
                    gold, pred, expected = (ast.literal_eval(x) for x in elt.elts)
                    cases.append({"file": fname, "gold": gold, "response": pred, "label": bool(expected)})
    return cases


def _gold_text(gold: str) -> str:
    """A Math-Verify test gold as a benchmark gold string: its boxes read as the grader reads
    a response's (joined across connectives), else its `$..$` spans comma-joined."""
    from replaygrpo.grading import extract_answer

    if "\\boxed" in gold:
        return extract_answer(gold, "none", join_boxes=True) or gold
    spans = [x.strip() for x in re.split(r"\$+", gold)[1::2] if x.strip()]
    return ", ".join(spans) if spans else gold.strip()


def mv_section(tests: Path, workers: int) -> list[str]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    cases = mv_labelled_cases(tests)
    for c in cases:
        c["tol"] = None
        c["gold_text"] = _gold_text(c["gold"])
    targets = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    mv = [bool(verify(parse(c["gold"], targets), parse(c["response"], targets))) for c in cases]
    as_bench = [dict(c, gold=c["gold_text"]) for c in cases]
    ours = {p: grade_project(as_bench, p, workers) for p in ("default", "qwen_math")}
    lines = [f"{len(cases)} cases read from `{tests}`.", "", "| grader | agrees with the label |", "|---|---:|"]
    for name, verdicts in (("math-verify 0.9 (its tests' own settings)", mv), *ours.items()):
        hits = sum(v == c["label"] for v, c in zip(verdicts, cases))
        lines.append(f"| {name} | {hits}/{len(cases)} ({hits / len(cases):.1%}) |")
    lines += ["", "Cases the default grader gets wrong (gold as given to it; response shortened):", ""]
    for c, v in zip(cases, ours["default"]):
        if v != c["label"]:
            lines.append(f"- {c['file']}: gold `{c['gold_text']}`, response `{c['response'][-120:]}`, "
                         f"label {c['label']}, default grader {v}")
    return lines


def classify(case: dict, ours: bool, mv: bool) -> str:
    if case["label"] is AMBIGUOUS:
        return "ambiguous rewrite (a marker could go either way)"
    if ours == case["label"]:
        return "math-verify's error"
    return "the project's error" if mv == case["label"] else "both wrong"


def report(cases: list[dict], verdicts: dict[str, list[bool]], seconds: float, cmd: str, mv_lines: list[str]) -> str:
    ours, qm, mv = verdicts["default"], verdicts["qwen_math"], verdicts["math-verify"]
    n = len(cases)
    labelled = [i for i, c in enumerate(cases) if c["label"] is not AMBIGUOUS]
    acc = {k: sum(v[i] == cases[i]["label"] for i in labelled) for k, v in verdicts.items()}
    lines = ["# Grader agreement study", "",
             f"Generated by `{cmd}` in {seconds:.0f} s on {os.cpu_count()} cores ({platform.machine()}, "
             f"Python {platform.python_version()}). Do not edit by hand; rerun the command.", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "", *__doc__.split("\n\n")[2].splitlines(), "",
             __doc__.split("\n\n")[3].replace("\n", " "), "",
             f"{n} responses from {len({(c['bench'], c['id']) for c in cases})} golds; "
             f"{len(labelled)} with a marker's verdict, {n - len(labelled)} ambiguous.", "",
             "## Agreement with the marker's verdict", "",
             "| grader | matches the marker | wrong |", "|---|---:|---:|"]
    for k in ("default", "qwen_math", "math-verify"):
        lines.append(f"| {k} | {acc[k]}/{len(labelled)} ({acc[k] / len(labelled):.2%}) | {len(labelled) - acc[k]} |")
    lines += ["", "## By rewrite (responses; wrong verdicts per grader)", "",
              "| rewrite | responses | default wrong | qwen_math wrong | math-verify wrong |",
              "|---|---:|---:|---:|---:|"]
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        by_kind[c["kind"]].append(i)
    for kind, all_idx in sorted(by_kind.items()):
        idx = [i for i in all_idx if cases[i]["label"] is not AMBIGUOUS]
        wrong = lambda v: str(sum(v[i] != cases[i]["label"] for i in idx)) if idx else "-"  # noqa: E731
        lines.append(f"| {kind} | {len(all_idx)} | {wrong(ours)} | {wrong(qm)} | {wrong(mv)} |")
    diffs = [i for i in range(n) if ours[i] != mv[i]]
    classes = Counter((classify(cases[i], ours[i], mv[i]), cases[i]["kind"]) for i in diffs)
    lines += ["", f"## Every disagreement between the default grader and math-verify ({len(diffs)})", "",
              "| class | rewrite | count | example (benchmark id: gold -> response's answer; default / math-verify) |",
              "|---|---|---:|---|"]
    for (cls, kind), count in sorted(classes.items(), key=lambda kv: (kv[0][0], -kv[1])):
        i = next(i for i in diffs if (classify(cases[i], ours[i], mv[i]), cases[i]["kind"]) == (cls, kind))
        c = cases[i]
        shown = c["response"].split("boxed{", 1)[-1][:-3] if "boxed{" in c["response"] else c["response"]
        lines.append(f"| {cls} | {kind} | {count} | {c['bench']} {c['id']}: `{c['gold']}` -> `{shown}`; "
                     f"{ours[i]} / {mv[i]} |".replace("\n", " "))
    errors = [i for i in diffs if classify(cases[i], ours[i], mv[i]) == "the project's error"]
    errors += [i for i in labelled if ours[i] != cases[i]["label"] and i not in errors]
    lines += ["", f"## Every response the default grader gets wrong ({len(errors)})", ""]
    lines += [f"- {cases[i]['bench']} {cases[i]['id']}, {cases[i]['kind']}: gold `{cases[i]['gold']}`, response "
              f"`{cases[i]['response']}`, marker {cases[i]['label']}, math-verify {mv[i]}" for i in errors] or ["None."]
    qdiff = Counter(cases[i]["kind"] for i in range(n) if qm[i] != ours[i])
    lines += ["", "## Where the qwen_math profile differs from the default (by design)", "",
              "| rewrite | responses |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in qdiff.most_common()]
    if mv_lines:
        lines += ["", "## Math-Verify's labelled real-output cases", "", *mv_lines]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="benchmark root (shared/data/benchmarks layout)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    ap.add_argument("--workers", type=int, default=2, help="grading processes per project profile")
    ap.add_argument("--mv-tests", type=Path, default=None, help="a Math-Verify checkout's tests/ dir")
    ap.add_argument("--every", type=int, default=1, help="smoke runs: keep every Nth response only")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # math-verify warns per timeout
    t0 = time.perf_counter()
    cases = load_cases(args.data)[::args.every]
    verdicts = {p: grade_project(cases, p, args.workers) for p in ("default", "qwen_math")}
    verdicts["math-verify"] = grade_math_verify(cases)
    mv_lines = mv_section(args.mv_tests, args.workers) if args.mv_tests else []
    cmd = "python scripts/grader_agreement.py " + " ".join(sys.argv[1:])
    text = report(cases, verdicts, time.perf_counter() - t0, cmd.strip(), mv_lines)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
