"""Truncated importance sampling: weights on fresh and replayed rows, the behaviour log-probs
kept through the replay buffer, and the configuration that would do nothing refused."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import Qwen3Config, Qwen3ForCausalLM

from replaygrpo.cli import CONF_DIR
from replaygrpo.config import ConfigError
from replaygrpo.forward import CompletionBatch, completion_logprobs
from replaygrpo.methods import with_pi_old
from replaygrpo.records import Rollout, UpdateBatch
from replaygrpo.replay import NaiveReplayBuffer, ReplayBuffer
from replaygrpo.update import UpdateOptions, update_step
from replaygrpo.variants import load_config

V = 64
SHIFT = 0.5  # pi_old - behaviour on every token: raw weight exp(0.5) = 1.65
CAP = 1.2


def tiny_model() -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        tie_word_embeddings=True)).train()


def rollouts(model: torch.nn.Module, n: int = 4) -> list[Rollout]:
    """Rollouts whose old_logprobs are the model's own (ratio 1); behaviour log-probs SHIFT lower."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, V, (5,), generator=g, dtype=torch.int32) for _ in range(n)]
    comps = [torch.randint(1, V, (3 + i,), generator=g, dtype=torch.int32) for i in range(n)]
    with torch.no_grad():
        cb = CompletionBatch.build(prompts, comps, 0)
        logp = completion_logprobs(model, cb, 1.0, None, "padded")
    return [Rollout(prompt_ids=p, completion_ids=c, old_logprobs=logp[i, :c.numel()].clone(), reward=float(i % 2),
                    advantage=1.0 if i % 2 else -1.0, birth_step=0, prompt_id=i, group_id=i,
                    behaviour_logprobs=logp[i, :c.numel()] - SHIFT)
            for i, (p, c) in enumerate(zip(prompts, comps))]


def loss_of(rows: list[Rollout], num_fresh: int, tis_cap: float | None):
    model = tiny_model()
    opts = UpdateOptions(pad_id=0, tis_cap=tis_cap, layout="padded", chunk_size=None)
    result = update_step(model, torch.optim.SGD(model.parameters(), lr=0.0), UpdateBatch(rows, num_fresh), opts)
    return result


@pytest.mark.parametrize("num_fresh", [4, 0], ids=["fresh", "replayed"])
def test_tis_weight_scales_the_loss_of_fresh_and_replayed_rows(num_fresh):
    """Every token's raw weight is exp(0.5) > cap, so the TIS loss is exactly cap x the plain one."""
    rows = rollouts(tiny_model())
    plain, tis = loss_of(rows, num_fresh, None), loss_of(rows, num_fresh, CAP)
    assert plain.row_tis is None
    assert tis.loss == pytest.approx(CAP * plain.loss, rel=1e-5)
    assert plain.loss != pytest.approx(tis.loss, rel=1e-3)
    tokens = torch.tensor([float(r.num_tokens) for r in rows])
    w_sum, w_max, truncated = tis.row_tis
    assert torch.allclose(w_sum, CAP * tokens) and torch.allclose(w_max, torch.full((4,), CAP))
    assert torch.equal(truncated, tokens)  # every token's weight was lowered by the cap


def test_replayed_rows_without_behaviour_get_weight_one():
    """A replayed trainer-mode rollout with no kept engine log-probs cannot be weighted: w = 1."""
    rows = [replace(r, behaviour_logprobs=None) for r in rollouts(tiny_model())]
    plain, tis = loss_of(rows, 0, None), loss_of(rows, 0, CAP)
    assert tis.loss == pytest.approx(plain.loss, rel=1e-6)
    assert torch.allclose(tis.row_tis[0], torch.tensor([float(r.num_tokens) for r in rows]))


def test_fresh_rows_are_weighted_from_the_engine_logprobs_in_old_logprobs():
    """Fresh rows built without the field (as before it existed): old_logprobs are the engine's."""
    rows = [replace(r, old_logprobs=r.behaviour_logprobs, behaviour_logprobs=None) for r in rollouts(tiny_model())]
    plain, tis = loss_of(rows, 4, None), loss_of(rows, 4, CAP)
    assert tis.loss == pytest.approx(CAP * plain.loss, rel=1e-5)


@pytest.mark.parametrize("make", [lambda: ReplayBuffer(tau_max=4, alpha=0.0), lambda: NaiveReplayBuffer(64)],
                         ids=["replay", "naive"])
def test_buffer_returns_behaviour_logprobs_bit_for_bit(make):
    fresh = rollouts(tiny_model())
    pi_old = [r.old_logprobs + 0.25 for r in fresh]  # the update's pi_old, distinct from both
    buf = make()
    buf.add(with_pi_old(fresh, fresh, pi_old, keep_behaviour=True))
    tensors, meta = buf.state_dict()
    assert any(k.endswith(".behav") for k in tensors)
    again = type(buf).from_state_dict(tensors, meta)
    for b in (buf, again):
        out = sorted(b.sample(4, step=1, generator=torch.Generator().manual_seed(0)), key=lambda r: r.prompt_id)
        assert [r.prompt_id for r in out] == [0, 1, 2, 3]
        for r, f, lp in zip(out, fresh, pi_old):
            assert torch.equal(r.old_logprobs, lp)
            assert torch.equal(r.behaviour_logprobs, f.behaviour_logprobs)


def test_buffer_keeps_no_behaviour_logprobs_when_tis_is_off():
    fresh = rollouts(tiny_model())
    off, on = ReplayBuffer(tau_max=4), ReplayBuffer(tau_max=4)
    off.add(with_pi_old(fresh, fresh, [r.old_logprobs for r in fresh]))
    on.add(with_pi_old(fresh, fresh, [r.old_logprobs for r in fresh], keep_behaviour=True))
    tokens = sum(r.num_tokens for r in fresh)
    assert on.nbytes - off.nbytes == 4 * tokens  # float32 per completion token, only when kept
    assert all(r.behaviour_logprobs is None for r in off.sample(4, 1, torch.Generator().manual_seed(0)))
    assert not any(k.endswith(".behav") for k in off.state_dict()[0])


def test_buffer_refuses_a_mixed_add():
    fresh = rollouts(tiny_model())
    with pytest.raises(ValueError, match="behaviour_logprobs"):
        ReplayBuffer(tau_max=4).add([fresh[0], replace(fresh[1], behaviour_logprobs=None)])


def test_tis_with_engine_pi_old_is_refused():
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        with pytest.raises(ConfigError, match=r"loss\.tis_cap.*loss\.old_logprobs=engine"):
            load_config(compose(config_name="config", overrides=["loss.old_logprobs=engine", "loss.tis_cap=2.0"]))
        cfg = load_config(compose(config_name="config", overrides=["loss.old_logprobs=trainer", "loss.tis_cap=2.0"]))
    assert cfg.loss.tis_cap == 2.0
