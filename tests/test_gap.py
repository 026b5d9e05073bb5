"""The per-step engine-vs-trainer gap (gap/* in metrics.jsonl): ~0 with the HF engine, which
samples from the trainer's own module; clearly visible with a shifted or a stale engine."""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import replaygrpo.train
from replaygrpo.grpo import logprob_gap
from replaygrpo.records import UpdateBatch
from replaygrpo.update import UpdateOptions, update_step
from tests.conftest import train_toy
from tests.test_tis import SHIFT, rollouts, tiny_model


def test_logprob_gap_by_hand():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, 0.0, 0.0]])
    engine = torch.tensor([[-1.5, -1.0, -3.0], [-0.5, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    gap = logprob_gap(trainer, engine, mask)
    assert gap["abs_sum"].tolist() == pytest.approx([1.5, 0.5])
    assert gap["abs_max"].tolist() == pytest.approx([1.0, 0.5])  # padding (the 9s) never counts
    k3 = lambda d: math.exp(d) - 1 - d  # noqa: E731
    assert gap["k3_sum"].tolist() == pytest.approx([k3(0.5) + k3(-1.0), k3(-0.5)])
    assert gap["tokens"].tolist() == [3, 1]


def update(rows, num_fresh, old_logprobs="trainer"):
    model = tiny_model()
    opts = UpdateOptions(pad_id=0, old_logprobs=old_logprobs, layout="padded", chunk_size=None)
    return update_step(model, torch.optim.SGD(model.parameters(), lr=0.0), UpdateBatch(rows, num_fresh), opts)


def test_update_measures_a_shifted_engine_on_fresh_rows():
    rows = rollouts(tiny_model())  # engine log-probs (behaviour_logprobs) SHIFT below the trainer's
    abs_sum, abs_max, k3_sum, tokens = update(rows, num_fresh=4).row_gap
    assert torch.equal(tokens, torch.tensor([float(r.num_tokens) for r in rows]))
    assert torch.allclose(abs_sum / tokens, torch.full((4,), SHIFT), atol=1e-5)
    assert torch.allclose(abs_max, torch.full((4,), SHIFT), atol=1e-5)
    assert torch.allclose(k3_sum / tokens, torch.full((4,), math.exp(SHIFT) - 1 - SHIFT), atol=1e-5)


def test_replayed_rows_are_measured_only_where_engine_logprobs_are_known():
    rows = rollouts(tiny_model())
    assert torch.allclose(update(rows, 0).row_gap[0], SHIFT * update(rows, 0).row_gap[3], atol=1e-4)
    bare = [replace(r, behaviour_logprobs=None) for r in rows]  # trainer pi_old only
    assert update(bare, 0).row_gap.abs().sum() == 0
    assert update(bare, 0, old_logprobs="engine").row_gap[3].sum() > 0  # old_logprobs are the engine's


def test_hf_engine_gap_is_zero_and_tis_is_logged_by_age(tmp_path):
    rows = train_toy(tmp_path, "method=replay", "loss.tis_cap=2.0", "trainer.steps=3", "trainer.prompts_per_step=8")
    for r in rows:
        assert r["gap/mean_abs"] < 1e-5 and r["gap/max_abs"] < 1e-4 and abs(r["gap/kl"]) < 1e-8, r
        # With the HF engine behaviour == pi_old on fresh rows: weight 1, nothing truncated.
        assert r["tis/weight_mean_by_age"][0] == pytest.approx(1.0, abs=1e-4)
        assert r["tis/truncated_frac_by_age"][0] == 0.0
    documented = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    assert [k for r in rows for k in r if f"`{k}`" not in documented] == []  # docs/metrics.md lists every key
    late = [r for r in rows if r["batch/n_replay"] > 0]
    assert late
    for r in late:  # replayed rows: engine log-probs kept by the buffer, so measured and weighted
        ages = [a for a, n in enumerate(r["replay/age_hist"]) if n and a > 0]
        assert all(r["gap/mean_abs_by_age"][a] is not None for a in ages)
        assert all(r["tis/weight_mean_by_age"][a] is not None for a in ages)


def test_stale_engine_shows_in_the_gap(tmp_path, monkeypatch):
    """An engine that never receives the new weights: step 1 matches, every later step does not."""
    real = replaygrpo.train.build_engine

    def stale(name, model, *args, **kwargs):
        engine = real(name, copy.deepcopy(model), *args, **kwargs)
        engine.sync_weights = lambda model: None  # the skipped sync
        return engine

    monkeypatch.setattr(replaygrpo.train, "build_engine", stale)
    rows = train_toy(tmp_path, "trainer.steps=3", "trainer.lr=1e-3")
    assert rows[0]["gap/mean_abs"] < 1e-5
    assert all(r["gap/mean_abs"] > 1e-3 and r["gap/kl"] > 1e-6 for r in rows[1:]), rows
