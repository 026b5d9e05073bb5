"""docs/extending.md's worked example: its code blocks register a method, an engine and a
loss aggregation, and the toy lab trains two steps with all three."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replaygrpo.cli import app
from replaygrpo.grpo import LOSS_AGGS
from replaygrpo.methods import METHODS
from replaygrpo.rollout import ENGINES
from tests.conftest import toy_overrides

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture
def registered():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {})
    yield
    METHODS.remove("latest")
    ENGINES.remove("counting")
    LOSS_AGGS.remove("seq_sum")


def test_worked_example_trains(registered, tmp_path):
    out = CliRunner().invoke(app, ["train", *toy_overrides(
        f"hydra.run.dir={tmp_path}", "method.name=latest", "engine.name=counting", "loss.agg=seq_sum",
        "trainer.steps=3")])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # One generate call per step, plus the toy eval's at the start and after the last step.
    assert [r["engine/generate_calls"] for r in rows] == [2, 3, 5]
    assert rows[0]["batch/n_replay"] == 0
    # Step 2 replays step 1's rollouts with a non-zero advantage, all of them (age 1).
    assert all(r["batch/n_replay"] == r_prev["buffer/size"] for r_prev, r in zip(rows, rows[1:]))
    assert all(len(r["replay/age_hist"]) == 2 for r in rows)  # the method's age bound, 1


def test_unregistered_names_are_config_errors():
    out = CliRunner().invoke(app, ["config", "show", "method.name=latest"])
    assert out.exit_code == 2 and "method.name" in out.output and "'replay'" in out.output
