"""The loop end to end on the toy lab: replay's invariants read back from metrics.jsonl."""
from __future__ import annotations

import pytest

from tests.conftest import train_toy


def test_replay_respects_age_bound_and_replays(tmp_path):
    rows = train_toy(tmp_path, "method=replay", "replay.tau_max=2", "trainer.steps=6", "trainer.prompts_per_step=8")
    for r in rows:
        assert r["replay/age_max"] <= 2
        assert sum(r["replay/age_hist"]) == r["batch/n_fresh"] + r["batch/n_replay"]
        assert len(r["replay/age_hist"]) == 3 and r["replay/age_hist"][0] == r["batch/n_fresh"]
        # Fresh rollouts are scored by the weights that made them: ratio exactly 1.
        assert r["loss/ratio_mean_by_age"][0] == pytest.approx(1.0, abs=1e-6)
        assert r["batch/n_replay"] <= round(1.0 * r["batch/n_fresh"])
    assert rows[0]["batch/n_replay"] == 0  # nothing is born before step 0
    assert all(r["batch/n_replay"] > 0 for r in rows[1:])
    assert any(r["replay/age_max"] == 2 for r in rows)
    # Replayed tokens are counted as trained, not as generated.
    assert all(r["tokens/trained"] > r["tokens/generated"] for r in rows[1:])


def test_tau_zero_never_replays(tmp_path):
    rows = train_toy(tmp_path, "method=replay", "replay.tau_max=0", "trainer.steps=3")
    assert all(r["batch/n_replay"] == 0 for r in rows)


def test_displacing_replay_keeps_batch_size(tmp_path):
    rows = train_toy(tmp_path, "method=replay", "replay.anchor=false", "replay.replay_ratio=0.5", "trainer.steps=4")
    for r in rows:
        assert r["batch/n_fresh"] + r["batch/n_replay"] == 16
    assert any(r["batch/n_replay"] > 0 for r in rows)


def test_naive_replay_runs_whole_groups(tmp_path):
    rows = train_toy(tmp_path, "method=naive_replay", "replay.capacity=64", "trainer.steps=4")
    assert all(r["buffer/size"] <= 64 for r in rows)
    assert any(r["batch/n_replay"] > 0 for r in rows[1:])


@pytest.mark.parametrize("overrides", [
    ("method=replay", "loss.old_logprobs=engine"),
    ("method=replay", "replay.unit=group", "replay.max_reuse=1", "replay.alpha=0"),
    ("method=replay", "loss.agg=seq_mean_token_sum", "loss.adv_scale=none", "loss.kl_coef=0.1"),
])
def test_switches_run_end_to_end(tmp_path, overrides):
    rows = train_toy(tmp_path, *overrides, "trainer.steps=3")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["loss/skipped"] == 0 for r in rows)
    if "loss.kl_coef=0.1" in overrides:
        assert rows[-1]["loss/kl"] >= 0.0
