"""The toy task: a distinct eval set, worked answers the grader accepts, per-level eval metrics,
and the eligible replay pool in metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from replaygrpo.cli import app
from replaygrpo.data.toy import LEVELS, eval_set, level_of, make_split, worked_answer
from replaygrpo.grading import grade
from replaygrpo.toymodel import build_tokenizer
from tests.conftest import toy_overrides


def test_eval_set_is_distinct_held_out_and_shared_over_levels() -> None:
    problems = eval_set([2, 3, 6], 2400)
    questions = [p.question for p in problems]
    assert len(problems) == 2400 and len(set(questions)) == 2400
    counts = {lvl: sum(level_of(p) == lvl for p in problems) for lvl in (2, 3, 6)}
    # Level 2 has only ~114 held-out questions: it gives them all, the others fill the rest evenly.
    assert counts[2] < 150 and counts[3] >= 1000 and sum(counts.values()) == 2400
    assert [level_of(p) for p in problems] == sorted(level_of(p) for p in problems)  # grouped by level
    train = {p.question for p in make_split([2, 3, 6], 20000, seed=0, test=False)}
    assert not train & set(questions)
    assert eval_set([2, 3, 6], 2400) == problems  # the same on every call and machine
    assert len(eval_set([1], 500)) < 20  # a level smaller than its share gives what it has


def test_worked_answers_are_graded_correct_and_level_6_writes_its_steps() -> None:
    tok = build_tokenizer()
    for lvl in LEVELS:
        p = make_split([lvl], 1, seed=3, test=False)[0]
        answer = worked_answer(p)
        assert grade(answer, p.gold), (p, answer)
        if lvl == 6:
            terms = p.question.removesuffix(" = ?").split(" + ")
            assert answer.count("=") == 3 and answer.startswith(f"{terms[0]}+{terms[1]}=")
            assert 30 <= len(tok(answer)["input_ids"]) <= 47  # fits the default 48 new tokens with eos
        else:
            assert answer == f"\\boxed{{{p.gold}}}"


def test_per_level_eval_and_eligible_pool_in_metrics(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["train", *toy_overrides(f"hydra.run.dir={tmp_path}", "method=replay",
                                                           "trainer.steps=3", "trainer.eval_every=3")])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert {"eval/accuracy/L2", "eval/accuracy/L3", "eval/accuracy/L6", "eval/truncated"} <= set(last)
    assert rows[0]["replay/eligible"] == 0  # nothing stored before step 0
    for r in rows[1:]:
        assert r["batch/n_replay"] <= r["replay/eligible"] <= r["buffer/size"]  # the size is after the add
