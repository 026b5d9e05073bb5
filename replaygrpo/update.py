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

from replaygrpo import distributed
from replaygrpo.forward import CompletionBatch, choose_layout, completion_logprobs, right_pad
from replaygrpo.grpo import policy_loss
from replaygrpo.records import Rollout


@dataclass
class UpdateResult:
    loss: float
    grad_norm: float
    skipped: bool  # non-finite loss or gradient: no step taken
    fresh_logprobs: list[Tensor]  # (C_i,) float32 trainer log-probs of each fresh rollout, in input order
    kl: float
    clip_count_by_age: Tensor  # (max_age + 1,) clipped tokens per rollout age
    ratio_sum_by_age: Tensor  # (max_age + 1,)
    tokens_by_age: Tensor  # (max_age + 1,) tokens forwarded per rollout age
    rows_skipped: int = 0  # zero-advantage rows left out of the forward
    idle_passes: int = 0  # zero-gradient micro-batches run to match other ranks' count (torchrun)


def micro_batches(rollouts: list[Rollout], token_budget: int) -> list[list[int]]:
    """Indices grouped so each micro-batch's padded size, rows x (longest prompt + longest
    completion), fits the budget; rows of one prompt stay adjacent to share its forward."""
    key: dict[bytes, int] = {}
    prompt_key = [key.setdefault(r.prompt_ids.numpy().tobytes(), len(key)) for r in rollouts]
    p_len = [r.prompt_ids.numel() for r in rollouts]
    c_len = [r.completion_ids.numel() for r in rollouts]
    order = sorted(range(len(rollouts)), key=lambda i: (p_len[i], prompt_key[i], c_len[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    max_p = max_c = 0
    for i in order:
        p, c = max(max_p, p_len[i]), max(max_c, c_len[i])
        if current and (len(current) + 1) * (p + c) > token_budget:
            batches.append(current)
            current, p, c = [], p_len[i], c_len[i]
        current.append(i)
        max_p, max_c = p, c
    if current:
        batches.append(current)
    return batches


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
    layout: str = "auto",
    skip_zero_advantage: bool = True,
) -> UpdateResult:
    """Forward, clipped-surrogate loss and backward over micro-batches, then one optimiser step.

    `rollouts[:num_fresh]` are this step's fresh rollouts; `ages[i]` is step - birth.
    For fresh rollouts in trainer mode the stored old_logprobs are ignored (pi_old is the
    detached forward). `engine_logprobs` (behaviour log-probs of every rollout) enables
    truncated importance sampling when `tis_cap` is set. Rows with advantage 0 are left out
    of the forward when `skip_zero_advantage` and no KL term needs them; they still count
    in the normaliser, their clip/ratio metrics are not measured, and a skipped fresh row
    keeps its given old_logprobs as its pi_old.

    Under torchrun `rollouts` is this rank's share: the normaliser counts the whole global
    batch, so FSDP's summed gradient is the single-process one, and every rank runs as many
    micro-batches (each sharded forward and backward is a collective), with idle passes
    where a rank has too few rollouts.
    """
    device = next(model.parameters()).device
    total_tokens = sum(r.completion_ids.numel() for r in rollouts)
    total_seqs = len(rollouts)
    kl_on = ref_model is not None and kl_coef > 0
    active = [i for i, r in enumerate(rollouts) if not (skip_zero_advantage and not kl_on and r.advantage == 0)]
    layout = choose_layout(layout, model)
    plan = [[active[j] for j in mb] for mb in micro_batches([rollouts[i] for i in active], token_budget)]
    if distributed.active():
        counts = distributed.gather((total_tokens, total_seqs, len(plan)))
        total_tokens, total_seqs = sum(c[0] for c in counts), sum(c[1] for c in counts)
        lengths = [r.prompt_ids.numel() + r.completion_ids.numel() for r in rollouts]
        plan = distributed.same_micro_batch_count(plan, lengths, max(c[2] for c in counts))
    fresh_logprobs = [r.old_logprobs for r in rollouts[:num_fresh]]
    n_age = max(max_age, max(ages, default=0)) + 1
    clip_by_age = torch.zeros(n_age)
    ratio_by_age = torch.zeros(n_age)
    tokens_by_age = torch.zeros(n_age)
    loss_total, kl_total = 0.0, 0.0
    optimizer.zero_grad(set_to_none=True)
    for rows in plan:  # positions in `rollouts`
        if not rows:
            distributed.idle_pass(model, ref_model if kl_on else None, pad_id, device)
            continue
        batch = [rollouts[i] for i in rows]
        cb = CompletionBatch.build([r.prompt_ids for r in batch], [r.completion_ids for r in batch], pad_id)
        cb = cb.to(device)
        comp = cb.mask
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logp = completion_logprobs(model, cb, temperature, chunk_size, layout)
            ref_logp = None
            if kl_on:
                with torch.no_grad():
                    ref_logp = completion_logprobs(ref_model, cb, temperature, chunk_size, layout)
        old = right_pad([r.old_logprobs for r in batch], comp.shape[1], 0.0, torch.float32).to(device)
        if old_logprobs == "trainer":
            is_fresh = torch.tensor([i < num_fresh for i in rows], device=device)
            old = torch.where(is_fresh[:, None], logp.detach(), old)
        behaviour = None
        if engine_logprobs is not None and tis_cap:
            behaviour = right_pad([engine_logprobs[i] for i in rows], comp.shape[1], 0.0, torch.float32).to(device)
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
        mb_ages = torch.tensor([ages[i] for i in rows])
        clip_by_age.index_add_(0, mb_ages, metrics["seq_clip_count"].float().cpu())
        ratio_by_age.index_add_(0, mb_ages, metrics["seq_ratio_sum"].float().cpu())
        tokens_by_age.index_add_(0, mb_ages, metrics["seq_tokens"].float().cpu())
        detached = logp.detach().float().cpu()
        for row, i in enumerate(rows):
            if i < num_fresh:
                fresh_logprobs[i] = detached[row, :rollouts[i].completion_ids.numel()].clone()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # every row skipped: AdamW still steps, as on the all-zero gradient
            p.grad = torch.zeros_like(p)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    norm = norm.full_tensor() if isinstance(norm, DTensor) else norm  # FSDP: the global norm
    skipped = not (math.isfinite(loss_total) and bool(torch.isfinite(norm)))
    if distributed.active():  # every shard steps or none does
        skipped = any(distributed.gather(skipped))
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return UpdateResult(
        loss=loss_total, grad_norm=float(norm), skipped=skipped, fresh_logprobs=fresh_logprobs, kl=kl_total,
        clip_count_by_age=clip_by_age, ratio_sum_by_age=ratio_by_age, tokens_by_age=tokens_by_age,
        rows_skipped=len(rollouts) - len(active), idle_passes=sum(1 for rows in plan if not rows))

