"""One optimiser step on a composed batch of rollouts (fresh and replayed).

The batch is split into micro-batches by a token budget and gradients accumulate to a
single step, with each micro-batch's loss weighted so the sum equals the loss of the
whole batch under the chosen aggregation. With `old_logprobs=trainer`, a fresh rollout's
pi_old is its log-prob in this very forward pass (the weights that generated it), so no
extra forward is spent; those values are returned for the replay buffer to store.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from replaygrpo.distributed import idle_pass
from replaygrpo.grpo import policy_loss, token_logprobs
from replaygrpo.rollout.types import Rollout


@dataclass
class UpdateResult:
    loss: float
    grad_norm: float
    skipped: bool  # non-finite loss or gradient: no step taken
    fresh_logprobs: list[Tensor]  # (C_i,) float32 trainer log-probs of each fresh rollout, in input order
    clip_fraction: float
    ratio_mean: float
    kl: float
    clip_count_by_age: Tensor  # (max_age + 1,) clipped tokens per rollout age
    ratio_sum_by_age: Tensor  # (max_age + 1,)
    tokens_by_age: Tensor  # (max_age + 1,)


def micro_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped so each padded micro-batch (rows x longest row) fits the budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _pad(rollouts: list[Rollout], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Right-padded (input_ids, attention_mask, completion_mask, old_logp).

    Position t of the last two scores the token at t + 1, so a rollout with prompt
    length P and completion length C occupies positions P-1 .. P+C-2.
    """
    width = max(r.prompt_ids.numel() + r.completion_ids.numel() for r in rollouts)
    n = len(rollouts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    comp = torch.zeros((n, width - 1), dtype=torch.bool)
    old = torch.zeros((n, width - 1), dtype=torch.float32)
    for i, r in enumerate(rollouts):
        p, c = r.prompt_ids.numel(), r.completion_ids.numel()
        ids[i, :p] = r.prompt_ids
        ids[i, p:p + c] = r.completion_ids
        attn[i, :p + c] = 1
        comp[i, p - 1:p + c - 1] = True
        old[i, p - 1:p + c - 1] = r.old_logprobs
    return ids, attn, comp, old


def sequence_token_logprobs(model: torch.nn.Module, ids: Tensor, attn: Tensor, temperature: float,
                            chunk_size: int | None = None) -> Tensor:
    """(B, L-1) log-probs of each next token under `model` at `temperature`."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    return token_logprobs(logits, ids[:, 1:], temperature=temperature, chunk_size=chunk_size)


def update_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rollouts: list[Rollout],
    ages: list[int],
    num_fresh: int,
    *,
    pad_id: int,
    temperature: float,
    clip_low: float,
    clip_high: float,
    agg: str,
    old_logprobs: str,
    tis_cap: float | None,
    token_budget: int,
    grad_clip: float,
    ref_model: torch.nn.Module | None = None,
    kl_coef: float = 0.0,
    max_age: int = 0,
    engine_logprobs: list[Tensor] | None = None,
    chunk_size: int | None = 4096,
    autocast_dtype: torch.dtype | None = None,
    total_tokens: int | None = None,
    total_seqs: int | None = None,
    plan: list[list[int]] | None = None,
) -> UpdateResult:
    """Forward, clipped-surrogate loss and backward over micro-batches, then one optimiser step.

    `rollouts[:num_fresh]` are this step's fresh rollouts; `ages[i]` is step - birth.
    For fresh rollouts in trainer mode the stored old_logprobs are ignored (pi_old is the
    detached forward). `engine_logprobs` (behaviour log-probs of every rollout) enables
    truncated importance sampling when `tis_cap` is set. Under torchrun, `total_tokens` /
    `total_seqs` are the whole global batch's counts (the loss normaliser), and `plan` is
    the micro-batch split with the same count on every rank; an empty entry is an idle pass.
    """
    device = next(model.parameters()).device
    lengths = [r.prompt_ids.numel() + r.completion_ids.numel() for r in rollouts]
    total_tokens = sum(r.completion_ids.numel() for r in rollouts) if total_tokens is None else total_tokens
    total_seqs = len(rollouts) if total_seqs is None else total_seqs
    fresh_logprobs: list[Tensor | None] = [None] * num_fresh
    n_age = max(max_age, max(ages, default=0)) + 1
    clip_by_age = torch.zeros(n_age)
    ratio_by_age = torch.zeros(n_age)
    tokens_by_age = torch.zeros(n_age)
    loss_total, kl_total = 0.0, 0.0
    optimizer.zero_grad(set_to_none=True)
    for mb in micro_batches(lengths, token_budget) if plan is None else plan:
        if not mb:
            idle_pass(model, ref_model if kl_coef > 0 else None, pad_id, device)
            continue
        batch = [rollouts[i] for i in mb]
        ids, attn, comp, old = _pad(batch, pad_id)
        ids, attn, comp = ids.to(device), attn.to(device), comp.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logp = sequence_token_logprobs(model, ids, attn, temperature, chunk_size)
        old = old.to(device)
        is_fresh = torch.tensor([i < num_fresh for i in mb], device=device)
        if old_logprobs == "trainer":
            old = torch.where(is_fresh[:, None], logp.detach(), old)
        behaviour = None
        if engine_logprobs is not None and tis_cap:
            behaviour = torch.zeros_like(old)
            for row, i in enumerate(mb):
                p, c = rollouts[i].prompt_ids.numel(), rollouts[i].completion_ids.numel()
                behaviour[row, p - 1:p + c - 1] = engine_logprobs[i].to(device)
        ref_logp = None
        if ref_model is not None and kl_coef > 0:
            with torch.no_grad():
                ref_logp = sequence_token_logprobs(ref_model, ids, attn, temperature, chunk_size)
        adv = torch.tensor([r.advantage for r in batch], dtype=torch.float32, device=device)
        loss, metrics = policy_loss(
            logp, old, adv, comp, clip_low=clip_low, clip_high=clip_high, agg=agg,
            ref_logp=ref_logp, kl_coef=kl_coef,
            tis_cap=tis_cap if behaviour is not None else None, behaviour_logp=behaviour)
        # Weight so the accumulated gradient is that of the loss over the whole batch.
        if agg == "token_mean":
            weight = int(comp.sum()) / max(total_tokens, 1)
        else:
            weight = len(batch) / total_seqs
        (loss * weight).backward()
        loss_total += float(loss.detach()) * weight
        kl_total += float(metrics.get("kl", 0.0)) * weight
        mb_ages = torch.tensor([ages[i] for i in mb])
        clip_by_age.index_add_(0, mb_ages, metrics["seq_clip_count"].float().cpu())
        ratio_by_age.index_add_(0, mb_ages, metrics["seq_ratio_sum"].float().cpu())
        tokens_by_age.index_add_(0, mb_ages, metrics["seq_tokens"].float().cpu())
        detached = logp.detach().float().cpu()
        for row, i in enumerate(mb):
            if i < num_fresh:
                p, c = rollouts[i].prompt_ids.numel(), rollouts[i].completion_ids.numel()
                fresh_logprobs[i] = detached[row, p - 1:p + c - 1].clone()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    norm = norm.full_tensor() if isinstance(norm, DTensor) else norm  # FSDP: the global norm
    skipped = not (math.isfinite(loss_total) and bool(torch.isfinite(norm)))
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    tokens = float(tokens_by_age.sum())
    return UpdateResult(
        loss=loss_total, grad_norm=float(norm), skipped=skipped,
        fresh_logprobs=[t if t is not None else torch.empty(0) for t in fresh_logprobs],
        clip_fraction=float(clip_by_age.sum()) / max(tokens, 1.0),
        ratio_mean=float(ratio_by_age.sum()) / max(tokens, 1.0), kl=kl_total,
        clip_count_by_age=clip_by_age, ratio_sum_by_age=ratio_by_age, tokens_by_age=tokens_by_age)
