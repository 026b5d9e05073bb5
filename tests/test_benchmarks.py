"""Benchmark loaders on the real local files, the gold rules, and the errors on bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from replaygrpo.data.benchmarks import HUB, KNOWN, BenchmarkError, last_boxed, load_benchmark

DATA_ROOT = Path(os.environ.get("REPLAYGRPO_DATA_ROOT", Path(__file__).parents[2] / "shared/data/benchmarks"))
needs_data = pytest.mark.skipif(not DATA_ROOT.is_dir(), reason=f"benchmark files not found at {DATA_ROOT} "
                                "(set REPLAYGRPO_DATA_ROOT)")

COUNTS = {"math500": 500, "aime24": 30, "amc23": 40, "minerva_math": 272, "olympiadbench": 675}


@needs_data
@pytest.mark.parametrize("name,count", COUNTS.items())
def test_counts_and_golds(name: str, count: int) -> None:
    problems = load_benchmark(name, str(DATA_ROOT), None)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.gold.strip() and p.question.strip() and p.source == name for p in problems)


@needs_data
def test_gold_rules() -> None:
    golds = {n: [p.gold for p in load_benchmark(n, DATA_ROOT)] for n in COUNTS}
    assert golds["math500"][0] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert "025" in golds["aime24"]  # leading zeros kept as written
    assert golds["amc23"][0] == "27"  # 27.0 in the file
    assert golds["minerva_math"][:3] == ["1.6", "4.5e33", "41.8"]  # last \boxed{} in the solution
    assert "69,84" in golds["olympiadbench"]  # `$69$,$84$`
    assert not any("$" in g for g in golds["olympiadbench"])


@needs_data
def test_limit_keeps_file_order() -> None:
    full = load_benchmark("aime24", DATA_ROOT)
    assert load_benchmark("aime24", DATA_ROOT, limit=3) == full[:3]


def test_toy_benchmark() -> None:
    problems = load_benchmark("toy", None, None)
    assert len(problems) == 512 and problems[0].source == "toy"
    assert load_benchmark("toy", "/nonexistent", 5) == problems[:5]


def test_hub_ids_cover_the_five() -> None:
    assert set(HUB) == set(COUNTS) and set(KNOWN) == set(COUNTS) | {"toy"}


def test_last_boxed() -> None:
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\boxed{7} then \\boxed{unbalanced") == "7"
    assert last_boxed("no box") is None


def _write(root: Path, name: str, lines: list[str]) -> Path:
    path = root / name / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_unknown_name_lists_known() -> None:
    with pytest.raises(BenchmarkError, match="known: math500, aime24, amc23, minerva_math, olympiadbench, toy"):
        load_benchmark("gsm8k", "/tmp")


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match=str(tmp_path / "aime24" / "test.jsonl")):
        load_benchmark("aime24", tmp_path)


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "amc23", [json.dumps({"id": 0, "question": "q", "answer": 1.0}), '{"id": 1, "quest'])
    with pytest.raises(BenchmarkError, match=f"{path}:2: malformed JSON"):
        load_benchmark("amc23", tmp_path)


def test_row_without_gold_names_everything(tmp_path: Path) -> None:
    good = {"problem": "p", "solution": "so \\boxed{3}", "idx": 0}
    bad = {"problem": "p", "solution": "no box here", "idx": 17}
    path = _write(tmp_path, "minerva_math", [json.dumps(good), json.dumps(bad)])
    with pytest.raises(BenchmarkError) as err:
        load_benchmark("minerva_math", tmp_path)
    assert all(s in str(err.value) for s in ("minerva_math", f"{path}:2", "id 17", "no gold"))
