"""The five math benchmarks (and the toy test split) as lists of `Problem`.

Two sources, one mapping. `data_root=None` downloads from the Hugging Face hub with
`datasets`; `data_root=path` reads `<path>/<name>/test.jsonl` in the layout of the
Qwen2.5-Math evaluation harness (shared/data/benchmarks). Either way a row goes through
the same `_row_to_problem`, which looks up the question and gold under the field names
both sources use, so a hub copy with capitalised fields (Maxwell-Jia/AIME_2024) or a
ready `answer` column (hub Minerva copies) needs no special case.

Gold rules (the harness's, see shared/data/README.md section 1):
- math500: `answer` (LaTeX string).
- aime24: `answer` as a string; leading zeros ("025") are kept, the grader compares numerically.
- amc23: `answer` is a JSON float; whole numbers become "27", not "27.0".
- minerva_math: no answer field locally; the content of the last balanced \\boxed{} in `solution`.
- olympiadbench: `final_answer[0]` with its `$` delimiters removed ("$69$,$84$" -> "69,84").
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaygrpo.data.problem import Problem
from replaygrpo.jsonl import read_jsonl


class BenchmarkError(ValueError):
    """A benchmark name, file or row is unusable; the message says which and where."""


@dataclass(frozen=True)
class HubSource:
    path: str
    """Hub dataset id."""
    name: str | None
    """Dataset config (subset), if the repo has several."""
    split: str


# Well-known hub copies of the same problems as the local files (see docs/evaluation.md).
HUB: dict[str, HubSource] = {
    "math500": HubSource("HuggingFaceH4/MATH-500", None, "test"),
    "aime24": HubSource("Maxwell-Jia/AIME_2024", None, "train"),
    "amc23": HubSource("math-ai/amc23", None, "test"),
    "minerva_math": HubSource("math-ai/minervamath", None, "test"),
    "olympiadbench": HubSource("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
}
TOY = "toy"
KNOWN = (*HUB, TOY)

QUESTION_FIELDS = ("question", "problem", "Question", "Problem", "input")
ID_FIELDS = ("unique_id", "id", "idx", "ID")


def last_boxed(text: str) -> str | None:
    """Content of the last balanced \\boxed{...} (or \\fbox{...}) in `text`, else None."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2  # `\{` is a literal brace, not grouping
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[m.end():i - 1].strip()
    return None


def _number_str(x: Any) -> str:
    # amc23 stores 27.0; "27" is what a model writes and what the table shows.
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x).strip()


def _dollar_strip(s: str) -> str:
    s = s.strip()
    s = re.sub(r"\$\s*\.$", "$", s)  # `$(-\infty, 0) \cup\{1\}$.`
    s = re.sub(r"\$\s*,\s*\$", ",", s)  # multi-answer `$69$,$84$` -> `69,84`
    return re.sub(r"(?<!\\)\$", "", s).strip()  # keep `\$` (a literal dollar)


def _first(row: dict[str, Any], fields: Iterable[str]) -> Any:
    for f in fields:
        if row.get(f) not in (None, "", []):
            return row[f]
    return None


def _gold_answer(row: dict[str, Any]) -> str | None:
    value = _first(row, ("answer", "Answer"))
    return None if value is None else _number_str(value)


def _gold_minerva(row: dict[str, Any]) -> str | None:
    value = _first(row, ("answer", "Answer"))  # hub copies carry it; the harness file does not
    if value is not None:
        return _number_str(value)
    solution = row.get("solution")
    return last_boxed(solution) if isinstance(solution, str) else None


def _gold_olympiad(row: dict[str, Any]) -> str | None:
    final = row.get("final_answer")
    if isinstance(final, list):
        final = final[0] if final else None
    return _dollar_strip(final) if isinstance(final, str) else None


GOLD: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "math500": _gold_answer,
    "aime24": _gold_answer,
    "amc23": _gold_answer,
    "minerva_math": _gold_minerva,
    "olympiadbench": _gold_olympiad,
}


def _row_to_problem(name: str, row: dict[str, Any], index: int, where: str) -> Problem:
    """One raw row -> Problem; `where` ("file:line" or "hub id row i") goes into errors."""
    rid = _first(row, ID_FIELDS)
    pid = str(rid) if rid is not None else str(index)
    question = _first(row, QUESTION_FIELDS)
    if not isinstance(question, str):
        raise BenchmarkError(f"{name}: {where} (id {pid}) has no question (looked for {', '.join(QUESTION_FIELDS)}).")
    gold = GOLD[name](row)
    if not gold:
        raise BenchmarkError(f"{name}: {where} (id {pid}) has no gold answer.")
    error = row.get("error")  # OlympiadBench: a per-answer tolerance such as "1e-1"
    return Problem(id=pid, question=question, gold=gold, source=name,
                   tolerance=float(error) if error not in (None, "") else None)


def read_benchmark_file(path: Path) -> list[tuple[int, dict[str, Any]]]:
    return read_jsonl(path, what="benchmark file", error=BenchmarkError)


def _load_local(name: str, root: Path, limit: int | None) -> list[Problem]:
    path = root / name / "test.jsonl"
    rows = read_benchmark_file(path)[:limit]
    return [_row_to_problem(name, row, i, f"{path}:{lineno}") for i, (lineno, row) in enumerate(rows)]


def _load_hub(name: str, limit: int | None) -> list[Problem]:  # pragma: no cover - needs internet
    from datasets import load_dataset

    src = HUB[name]
    ds = load_dataset(src.path, src.name, split=src.split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    where = f"hub {src.path}" + (f"/{src.name}" if src.name else "") + f" split {src.split} row"
    return [_row_to_problem(name, dict(row), i, f"{where} {i}") for i, row in enumerate(ds)]


def load_benchmark(name: str, data_root: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """The first `limit` problems (all if None) of benchmark `name`, in file order.

    `data_root=None` loads from the hub (see HUB), else `<data_root>/<name>/test.jsonl`.
    `toy` is the toy lab's held-out split (512 problems, levels 1-3, seed 0) and ignores
    `data_root`, so the toy lab is evaluated through the same path as the real benchmarks.
    """
    if name not in KNOWN:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(KNOWN)}.")
    if limit is not None and limit < 1:
        raise BenchmarkError(f"limit must be >= 1 or None, got {limit}.")
    if name == TOY:
        from replaygrpo.data.toy import make_split

        return make_split([1, 2, 3], 512, seed=0, test=True)[:limit]
    if data_root is None:
        return _load_hub(name, limit)
    return _load_local(name, Path(data_root), limit)
