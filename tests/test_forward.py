"""The shared-prefix forward and the zero-advantage skip change nothing but the cost."""
from __future__ import annotations

import copy

import pytest
import torch

from replaygrpo.config import Config
from replaygrpo.forward import LAYOUTS, CompletionBatch, choose_layout, completion_logprobs
from replaygrpo.records import Rollout
from replaygrpo.toymodel import build_model, build_tokenizer
from replaygrpo.records import UpdateBatch
from replaygrpo.update import UpdateOptions, micro_batches, update_step


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    tok = build_tokenizer()
    return build_model(Config(), len(tok), tok.eos_token_id), tok


def _rows(vocab: int, seed: int = 1):
    """Three prompts of different lengths, ten completions (lengths 1..9) spread over them."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (n,), generator=g, dtype=torch.int32) for n in (7, 12, 3)]
    rows = [prompts[i % 3].clone() for i in range(10)]  # equal content, distinct tensors
    comps = [torch.randint(5, vocab, (n,), generator=g, dtype=torch.int32) for n in (1, 5, 9, 2, 7, 3, 8, 1, 4, 6)]
    return rows, comps


def _reference(model, prompts, comps, temperature):
    """Each row alone, unpadded, through the plain model: the quantity to reproduce."""
    out = []
    for p, c in zip(prompts, comps):
        ids = torch.cat([p, c]).long()[None]
        logits = model(input_ids=ids).logits[0, :-1].float() / temperature
        out.append(torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)[len(p) - 1:])
    return out


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_completion_logprobs_equal_per_row_forward(toy, layout, chunk_size):
    model, tok = toy
    prompts, comps = _rows(len(tok))
    batch = CompletionBatch.build(prompts, comps, tok.pad_token_id)
    assert batch.prompts.ids.shape[0] == 3  # identical prompts stored once
    weights = torch.linspace(-1, 1, 10)

    model.zero_grad()
    ref = _reference(model, prompts, comps, 0.7)
    sum(w * r.sum() for w, r in zip(weights, ref)).backward()
    ref_grads = _grads(model)

    model.zero_grad()
    logp = completion_logprobs(model, batch, 0.7, chunk_size, layout)
    assert logp.shape == (10, 9)
    (weights[:, None] * torch.where(batch.mask, logp, 0)).sum().backward()
    for i, r in enumerate(ref):
        torch.testing.assert_close(logp[i, :r.numel()], r, atol=2e-6, rtol=1e-5)
    for got, want in zip(_grads(model), ref_grads):
        assert float((got - want).norm()) <= 1e-5 * float(want.norm()) + 1e-7


def _batch(vocab: int, advantages: list[float]) -> list[Rollout]:
    prompts, comps = _rows(vocab, seed=2)
    g = torch.Generator().manual_seed(3)
    return [Rollout(p, c, -torch.rand(c.numel(), generator=g), reward=float(a > 0), advantage=a,
                    birth_step=0, prompt_id=i % 3, group_id=i % 3)
            for i, (p, c, a) in enumerate(zip(prompts, comps, advantages))]


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_fast_paths_take_the_same_step(toy, agg):
    """Shared prefix and zero-advantage skipping on/off: same loss, same weights after two
    steps, the second with every advantage 0 (AdamW's momentum still moves the weights)."""
    model, tok = toy
    adv = [0.0, 1.5, -0.5, 0.0, 0.8, -1.2, 0.0, 0.3, -0.9, 0.0]
    steps = [_batch(len(tok), adv), _batch(len(tok), [0.0] * 10)]
    outcomes = []
    for layout, skip, budget in [("padded", False, 4096), ("shared_prefix", True, 4096), ("shared_prefix", False, 60),
                                 ("packed", True, 60), ("packed", False, 4096)]:
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        opts = UpdateOptions(pad_id=0, temperature=1.0, clip_low=0.2, clip_high=0.2, agg=agg, old_logprobs="trainer",
                             tis_cap=None, token_budget=budget, grad_clip=1.0, layout=layout,
                             skip_zero_advantage=skip)
        res = [update_step(m, opt, UpdateBatch(b, num_fresh=6), opts) for b in copy.deepcopy(steps)]
        outcomes.append((res, [p.detach().clone() for p in m.parameters()]))
    (base, base_params) = outcomes[0]
    assert base[0].rows_skipped == 0
    assert outcomes[1][0][0].rows_skipped == 4 and outcomes[1][0][1].rows_skipped == 10
    assert outcomes[3][0][0].rows_skipped == 4 and outcomes[4][0][0].rows_skipped == 0
    start = [p.detach() for p in model.parameters()]
    base_delta = torch.cat([(a - b).flatten() for a, b in zip(base_params, start)])
    assert float(base_delta.abs().max()) > 1e-3
    for res, params in outcomes[1:]:
        assert res[0].loss == pytest.approx(base[0].loss, rel=1e-5, abs=1e-7)
        assert res[0].grad_norm == pytest.approx(base[0].grad_norm, rel=1e-4)
        # Adam divides by sqrt(v): float noise in near-zero gradients moves a few weights
        # by ~1e-5 of a 1e-2 step, so the steps are compared as a whole.
        delta = torch.cat([(a - b).flatten() for a, b in zip(params, start)])
        assert float((delta - base_delta).norm()) <= 1e-3 * float(base_delta.norm())
        # pi_old handed to the buffer: the trainer's forward for trained fresh rows.
        for i in (1, 2, 4, 5):
            torch.testing.assert_close(res[0].fresh_logprobs[i], base[0].fresh_logprobs[i], atol=2e-6, rtol=1e-5)


def test_micro_batches_fit_the_budget_and_keep_prompts_together(toy):
    _, tok = toy
    rollouts = _batch(len(tok), [1.0] * 10)
    for budget in (1, 30, 60, 200, 10_000):
        batches = micro_batches(rollouts, budget)
        assert sorted(i for b in batches for i in b) == list(range(10))
        for b in batches:
            width = max(rollouts[i].prompt_ids.numel() for i in b) + max(rollouts[i].completion_ids.numel() for i in b)
            assert len(b) == 1 or len(b) * width <= budget
        if budget >= 10_000:
            assert len(batches) == 1
        # Rows of one prompt are contiguous in the order micro-batches are cut from.
        order = [rollouts[i].prompt_id for b in batches for i in b]
        assert order == sorted(order, key=order.index)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_cache_free_layouts_under_gradient_checkpointing(toy, layout):
    model, tok = toy
    m = copy.deepcopy(model).train()
    m.gradient_checkpointing_enable()
    prompts, comps = _rows(len(tok))
    ref = _reference(m, prompts, comps, 1.0)
    m.zero_grad()
    sum(r.sum() for r in ref).backward()
    ref_grads = _grads(m)
    m.zero_grad()
    batch = CompletionBatch.build(prompts, comps, tok.pad_token_id)
    logp = completion_logprobs(m, batch, 1.0, None, layout)
    torch.where(batch.mask, logp, 0).sum().backward()
    for i, r in enumerate(ref):
        torch.testing.assert_close(logp[i, :r.numel()], r, atol=2e-6, rtol=1e-5)
    for got, want in zip(_grads(m), ref_grads):
        assert float((got - want).norm()) <= 1e-5 * float(want.norm()) + 1e-7


def test_auto_layout_follows_gradient_checkpointing(toy):
    model, _ = toy
    m = copy.deepcopy(model)
    assert choose_layout("auto", m) == "shared_prefix"
    m.gradient_checkpointing_enable()
    assert choose_layout("auto", m) == "padded"  # sdpa: packing would need a dense (T, T) mask
    m.config._attn_implementation = "flash_attention_2"
    assert choose_layout("auto", m) == "packed"
    assert choose_layout("packed", model) == "packed"
    with pytest.raises(ValueError, match="unknown forward layout 'nope'"):
        completion_logprobs(model, CompletionBatch.build([torch.tensor([1])], [torch.tensor([2])], 0), 1.0,
                            layout="nope")
