"""trainer.mini_batches: N clipped optimiser steps per composed batch, each rollout trained once,
against a pi_old fixed before the first step."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from replaygrpo.cli import CONF_DIR
from replaygrpo.config import ConfigError
from replaygrpo.forward import CompletionBatch, completion_logprobs
from replaygrpo.records import Rollout, UpdateBatch
from replaygrpo.update import UpdateOptions, update, update_step
from replaygrpo.variants import load_config

from tests.conftest import train_toy as run
from tests.test_tis import V, tiny_model



def logprobs(model: torch.nn.Module, rows: list[Rollout]) -> list[torch.Tensor]:
    with torch.no_grad():
        cb = CompletionBatch.build([r.prompt_ids for r in rows], [r.completion_ids for r in rows], 0)
        logp = completion_logprobs(model, cb, 1.0, None, "padded")
    return [logp[i, :r.num_tokens].clone() for i, r in enumerate(rows)]


def batch(model: torch.nn.Module, n: int = 8, engine_shift: float = 0.3) -> UpdateBatch:
    """n fresh rollouts (two prompts) whose engine log-probs sit `engine_shift` below the model's."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, V, (5,), generator=g, dtype=torch.int32) for _ in range(2)]
    rows = [Rollout(prompts[i % 2], torch.randint(1, V, (3 + i % 3,), generator=g, dtype=torch.int32),
                    torch.zeros(0), reward=float(i % 2), advantage=1.0 if i % 2 else -1.0, birth_step=0,
                    prompt_id=i % 2, group_id=i % 2) for i in range(n)]
    return UpdateBatch([Rollout(**{**r.__dict__, "old_logprobs": lp - engine_shift})
                        for r, lp in zip(rows, logprobs(model, rows))], num_fresh=n)


def opts(n: int, **kw) -> UpdateOptions:
    return UpdateOptions(pad_id=0, layout="padded", chunk_size=None, mini_batches=n, **kw)


def test_n_steps_each_rollout_once_against_pi_old_before_the_first():
    model = tiny_model()
    b = batch(model)
    before = logprobs(model, b.rollouts)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    result = update(model, opt, b, opts(4), order_seed=3)
    assert result.optimizer_steps == 4
    assert all(int(s["step"]) == 4 for s in opt.state.values())
    # every rollout forwarded exactly once: its tokens, no more
    assert result.row_tokens.tolist() == [float(r.num_tokens) for r in b.rollouts]
    # pi_old is the trainer's forward before any step (not the engine's, not a later forward)
    for got, want in zip(result.fresh_logprobs, before):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the first part trains at ratio 1; the later ones on moved weights, where the clip bites
    ratio_mean = result.row_ratio_sum / result.row_tokens
    assert (ratio_mean - 1).abs().max() > 0.05
    assert result.row_clip_count.sum() > 0
    # the gap of the fresh rows is measured before any step: the engine's shift, exactly
    gap_mean = result.row_gap[0] / result.row_gap[3]
    torch.testing.assert_close(gap_mean, torch.full_like(gap_mean, 0.3), rtol=0, atol=1e-5)
    assert result.scored_tokens == sum(r.num_tokens for r in b.rollouts)


def test_one_mini_batch_is_the_single_step_and_the_order_follows_the_seed():
    weights = {}
    for name, n, seed in (("step", None, 0), ("n1", 1, 0), ("n2a", 2, 5), ("n2b", 2, 5), ("n2c", 2, 6)):
        model = tiny_model()
        b = batch(model)
        opt = torch.optim.AdamW(model.parameters(), lr=0.05)
        if n is None:
            update_step(model, opt, b, opts(1))
        else:
            update(model, opt, b, opts(n), order_seed=seed)
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(weights["step"], weights["n1"])
    assert torch.equal(weights["n2a"], weights["n2b"])  # same seed, same shuffle: resumable
    assert not torch.equal(weights["n2a"], weights["n2c"])
    assert not torch.equal(weights["n1"], weights["n2a"])


def test_engine_pi_old_needs_no_scoring_forward():
    model = tiny_model()
    b = batch(model)
    result = update(model, torch.optim.AdamW(model.parameters(), lr=0.05), b, opts(2, old_logprobs="engine"))
    assert result.scored_tokens == 0
    for got, r in zip(result.fresh_logprobs, b.rollouts):
        assert torch.equal(got, r.old_logprobs)


@pytest.mark.parametrize("n", [0, 129])
def test_mini_batches_out_of_range_are_refused(n):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        with pytest.raises(ConfigError, match=r"trainer\.mini_batches.*\[1, 128\]"):
            load_config(compose(config_name="config", overrides=[f"trainer.mini_batches={n}"]))


def test_training_with_mini_batches_logs_each_step_and_the_scoring_cost(tmp_path):
    rows = run(tmp_path, "method=replay", "trainer.mini_batches=4", "trainer.steps=3")
    assert [r["optimizer/steps"] for r in rows] == [4, 4, 4]
    for r in rows:
        assert r["tokens/scored"] > 0 and r["positions/scored"] > r["tokens/scored"]
        assert r["positions/forwarded"] > r["tokens/forwarded"]
    assert max(r["batch/n_replay"] for r in rows) > 0
