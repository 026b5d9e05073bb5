"""data.max_prompt_tokens: training prompts longer than it (rendered, in tokens) are dropped at
load time and counted; a bound that leaves nothing is an error naming the key."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from replaygrpo.cli import app
from replaygrpo.data.problem import Problem
from replaygrpo.data.train_sets import DataError, drop_long_prompts
from tests.conftest import toy_overrides

runner = CliRunner()


def problems(n: int) -> list[Problem]:
    return [Problem(id=str(i), question=f"q{i}", gold=str(i), source="t") for i in range(n)]


def test_long_prompts_are_dropped_in_order():
    ids = [[1] * n for n in (3, 5, 4, 6)]
    kept, kept_ids, dropped = drop_long_prompts(problems(4), ids, max_tokens=4)
    assert [p.id for p in kept] == ["0", "2"] and kept_ids == [[1] * 3, [1] * 4] and dropped == 2


def test_nothing_left_names_the_key():
    with pytest.raises(DataError, match=r"data\.max_prompt_tokens=2.*shortest has 3"):
        drop_long_prompts(problems(2), [[1] * 3, [1] * 4], max_tokens=2)


def test_train_drops_and_counts_long_toy_prompts(tmp_path):
    # Toy prompts render to 16, 17, 18 or 23 tokens (level 5 is the longest).
    out = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={tmp_path}", "data.max_prompt_tokens=20",
                                                      "trainer.steps=1")])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 < summary["prompts_dropped"] < 20000
    assert "longer than data.max_prompt_tokens=20" in (tmp_path / "cli.log").read_text()


def test_train_refuses_a_bound_that_drops_everything(tmp_path):
    out = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={tmp_path}", "data.max_prompt_tokens=8")])
    assert out.exit_code != 0
    assert "data.max_prompt_tokens=8" in out.output
