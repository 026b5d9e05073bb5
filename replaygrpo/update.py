"""The optimiser step(s) on a composed batch of rollouts (fresh and replayed).

The batch is split into micro-batches by a token budget and gradients accumulate to a
single step, with each micro-batch's loss weighted so the sum equals the loss of the
whole batch under the chosen aggregation. With `old_logprobs=trainer`, a fresh rollout's
pi_old is its log-prob in this very forward pass (the weights that generated it), so no
extra forward is spent; those values are returned for the replay buffer to store.

Every row whose engine log-probs are known (a fresh row, a row with `behaviour_logprobs`,
any row with `old_logprobs=engine`) has its engine-vs-trainer gap measured against this
forward, and with `tis_cap` its surrogate weighted by min(exp(pi_old - engine), cap).

With `mini_batches` N > 1 (verl's ppo_mini_batch_size = batch / N, TRL's
steps_per_generation = N) the batch is shuffled and split into N parts, each its own
clipped step; every rollout is used once per batch. pi_old must then be fixed before the
first step: in trainer mode one extra no-grad forward scores the fresh rollouts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from replaygrpo import distributed
from replaygrpo.forward import CompletionBatch, choose_layout, completion_logprobs, right_pad
from replaygrpo.config import Config
from replaygrpo.grpo import get_agg, logprob_gap, policy_loss
from replaygrpo.records import Rollout, UpdateBatch


@dataclass(frozen=True)
class UpdateOptions:
    """How the update runs: the loss.* settings, the micro-batching and the compute layout."""

    pad_id: int
    temperature: float = 1.0
    """The sampling temperature: log-probs are those of logits / temperature."""
    clip_low: float = 0.2
    clip_high: float = 0.2
    agg: str = "token_mean"
    """A registered loss aggregation (`grpo.LOSS_AGGS`); it brings its micro-batch weight."""
    old_logprobs: str = "trainer"
    """trainer: a fresh rollout's pi_old is this forward (detached); engine: its stored log-probs."""
    tis_cap: float | None = None
    """Truncated importance sampling: w = min(exp(pi_old - engine log-probs), tis_cap) (None = off)."""
    kl_coef: float = 0.0
    token_budget: int = 16384
    """Padded tokens per micro-batch."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    autocast_dtype: torch.dtype | None = None
    layout: str = "auto"
    skip_zero_advantage: bool = True
    chunk_size: int | None = 4096
    """Tokens per chunk of the log-prob computation (None = one piece)."""
    mini_batches: int = 1
    """Optimiser steps per composed batch (each on a shuffled 1/N of its rollouts)."""

    @classmethod
    def from_config(cls, cfg: Config, pad_id: int, autocast_dtype: torch.dtype | None) -> UpdateOptions:
        lo, t = cfg.loss, cfg.trainer
        return cls(pad_id=pad_id, temperature=cfg.engine.temperature, clip_low=lo.clip_low, clip_high=lo.clip_high,
                   agg=lo.agg, old_logprobs=lo.old_logprobs, tis_cap=lo.tis_cap, kl_coef=lo.kl_coef,
                   token_budget=t.micro_batch_tokens, grad_clip=t.grad_clip, autocast_dtype=autocast_dtype,
                   layout=t.update_layout, skip_zero_advantage=t.skip_zero_advantage,
                   mini_batches=t.mini_batches)


@dataclass
class UpdateResult:
    loss: float
    grad_norm: float
    skipped: bool  # non-finite loss or gradient: no step taken
    fresh_logprobs: list[Tensor]  # (C_i,) float32 pi_old each fresh rollout was trained with, in input order
    kl: float
    row_clip_count: Tensor  # (N,) clipped tokens of each rollout (0 for rows left out of the forward)
    row_ratio_sum: Tensor  # (N,) sum of its tokens' importance ratios
    row_tokens: Tensor  # (N,) its tokens forwarded (0 for rows left out)
    row_gap: Tensor  # (4, N) engine-vs-trainer gap: sum |d|, max |d|, sum k3, tokens (0 where not measured)
    row_tis: Tensor | None  # (3, N) TIS weights: sum, max, truncated tokens (None: TIS off)
    rows_skipped: int = 0  # zero-advantage rows left out of the forward
    idle_passes: int = 0  # zero-gradient micro-batches run to match other ranks' count (torchrun)
    optimizer_steps: int = 1  # steps taken (mini_batches less the skipped ones)
    scored_tokens: int = 0  # completion tokens of the no-grad pi_old forward (mini-batches, trainer mode)
    scored_positions: int = 0  # prompt + completion positions of those rows


def engine_logprobs(r: Rollout, fresh: bool, old_logprobs: str) -> Tensor | None:
    """(C,) the engine's log-probs of `r`'s sampled tokens, or None where the record does not hold them.

    Kept `behaviour_logprobs` first; else `old_logprobs` where those are the engine's: with
    `loss.old_logprobs=engine`, and for a fresh rollout in trainer mode (the engine's until
    the update replaces them with its own forward). A replayed rollout in trainer mode
    without kept behaviour log-probs carries only the trainer's pi_old.
    """
    if r.behaviour_logprobs is not None:
        return r.behaviour_logprobs
    return r.old_logprobs if fresh or old_logprobs == "engine" else None


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


def update_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: UpdateBatch,
                opts: UpdateOptions, ref_model: torch.nn.Module | None = None) -> UpdateResult:
    """Forward, clipped-surrogate loss and backward over micro-batches, then one optimiser step.

    `batch.rollouts[:batch.num_fresh]` are this step's fresh rollouts. For fresh rollouts
    in trainer mode the stored old_logprobs are ignored (pi_old is the detached forward).
    A row's engine log-probs (`engine_logprobs`) are the behaviour log-probs of truncated
    importance sampling (`opts.tis_cap`); a row without them gets weight 1. Rows with
    advantage 0 are left out of the forward when `skip_zero_advantage` and no KL term needs
    them; they still count in the normaliser, their clip/ratio/gap metrics are not
    measured, and a skipped fresh row keeps its given old_logprobs as its pi_old.

    Under torchrun `batch` is this rank's share: the normaliser counts the whole global
    batch, so FSDP's summed gradient is the single-process one, and every rank runs as many
    micro-batches (each sharded forward and backward is a collective), with idle passes
    where a rank has too few rollouts.
    """
    rollouts, num_fresh = batch.rollouts, batch.num_fresh
    aggregation = get_agg(opts.agg)
    device = next(model.parameters()).device
    total_tokens = sum(r.completion_ids.numel() for r in rollouts)
    total_seqs = len(rollouts)
    kl_on = ref_model is not None and opts.kl_coef > 0
    active = _forwarded(rollouts, opts, kl_on)
    layout = choose_layout(opts.layout, model)
    plan = [[active[j] for j in mb] for mb in micro_batches([rollouts[i] for i in active], opts.token_budget)]
    if distributed.active():
        counts = distributed.gather((total_tokens, total_seqs, len(plan)))
        total_tokens, total_seqs = sum(c[0] for c in counts), sum(c[1] for c in counts)
        lengths = [r.prompt_ids.numel() + r.completion_ids.numel() for r in rollouts]
        plan = distributed.same_micro_batch_count(plan, lengths, max(c[2] for c in counts))
    fresh_logprobs = [r.old_logprobs for r in rollouts[:num_fresh]]
    row_clip, row_ratio, row_tokens = torch.zeros(len(rollouts)), torch.zeros(len(rollouts)), torch.zeros(len(rollouts))
    row_gap = torch.zeros(4, len(rollouts))
    row_tis = torch.zeros(3, len(rollouts)) if opts.tis_cap else None
    loss_total, kl_total = 0.0, 0.0
    optimizer.zero_grad(set_to_none=True)
    for rows in plan:  # positions in `rollouts`
        if not rows:
            distributed.idle_pass(model, ref_model if kl_on else None, opts.pad_id, device)
            continue
        mb = [rollouts[i] for i in rows]
        cb = CompletionBatch.build([r.prompt_ids for r in mb], [r.completion_ids for r in mb], opts.pad_id)
        cb = cb.to(device)
        comp = cb.mask
        dtype = opts.autocast_dtype
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logp = completion_logprobs(model, cb, opts.temperature, opts.chunk_size, layout)
            ref_logp = None
            if kl_on:
                with torch.no_grad():
                    ref_logp = completion_logprobs(ref_model, cb, opts.temperature, opts.chunk_size, layout)
        stored = right_pad([r.old_logprobs for r in mb], comp.shape[1], 0.0, torch.float32).to(device)
        old = stored
        if opts.old_logprobs == "trainer":
            is_fresh = torch.tensor([i < num_fresh for i in rows], device=device)
            old = torch.where(is_fresh[:, None], logp.detach(), stored)
        # The engine's log-probs of the sampled tokens where known: the gap to this forward
        # is logged, and they are the behaviour policy of truncated importance sampling.
        engine_lp = [engine_logprobs(r, i < num_fresh, opts.old_logprobs) for r, i in zip(mb, rows)]
        known = torch.tensor([lp is not None for lp in engine_lp], device=device)
        engine = right_pad([r.old_logprobs if lp is None else lp for r, lp in zip(mb, engine_lp)],
                           comp.shape[1], 0.0, torch.float32).to(device)
        gap = logprob_gap(logp.detach(), engine, comp & known[:, None])
        behaviour = torch.where(known[:, None], engine, old) if opts.tis_cap else None  # unknown: w = 1
        adv = torch.tensor([r.advantage for r in mb], dtype=torch.float32, device=device)
        loss, metrics = policy_loss(
            logp, old, adv, comp, clip_low=opts.clip_low, clip_high=opts.clip_high, agg=aggregation.name,
            ref_logp=ref_logp, kl_coef=opts.kl_coef,
            tis_cap=opts.tis_cap if behaviour is not None else None, behaviour_logp=behaviour)
        # Weight so the accumulated gradient is that of the loss over the whole batch.
        weight = aggregation.share(comp, total_tokens, total_seqs)
        (loss * weight).backward()
        loss_total += float(loss.detach()) * weight
        kl_total += float(metrics.get("kl", 0.0)) * weight
        at = torch.tensor(rows)
        row_clip[at] = metrics["seq_clip_count"].float().cpu()
        row_ratio[at] = metrics["seq_ratio_sum"].float().cpu()
        row_tokens[at] = metrics["seq_tokens"].float().cpu()
        row_gap[:, at] = torch.stack([gap["abs_sum"], gap["abs_max"], gap["k3_sum"], gap["tokens"]]).cpu()
        if row_tis is not None:
            row_tis[:, at] = torch.stack([metrics[k] for k in ("seq_tis_sum", "seq_tis_max",
                                                               "seq_tis_truncated")]).float().cpu()
        if opts.old_logprobs == "trainer":  # the pi_old this step used, for the buffer to replay with
            detached = logp.detach().float().cpu()
            for row, i in enumerate(rows):
                if i < num_fresh:
                    fresh_logprobs[i] = detached[row, :rollouts[i].completion_ids.numel()].clone()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # every row skipped: AdamW still steps, as on the all-zero gradient
            p.grad = torch.zeros_like(p)
    norm = torch.nn.utils.clip_grad_norm_(params, opts.grad_clip if opts.grad_clip > 0 else float("inf"))
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
        row_clip_count=row_clip, row_ratio_sum=row_ratio, row_tokens=row_tokens, row_gap=row_gap, row_tis=row_tis,
        rows_skipped=len(rollouts) - len(active), idle_passes=sum(1 for rows in plan if not rows),
        optimizer_steps=int(not skipped))



def _forwarded(rollouts: list[Rollout], opts: UpdateOptions, kl_on: bool) -> list[int]:
    """Positions of the rows the update forwards (zero-advantage rows are left out unless KL needs them)."""
    return [i for i, r in enumerate(rollouts) if not (opts.skip_zero_advantage and not kl_on and r.advantage == 0)]


@torch.no_grad()
def score_pi_old(model: torch.nn.Module, batch: UpdateBatch, opts: UpdateOptions,
                 kl_on: bool = False) -> tuple[list[Rollout], Tensor, int, int]:
    """The fresh rollouts with pi_old fixed to the trainer's log-probs before any step (one no-grad forward).

    Returns (rollouts, gap, tokens, positions): every row of `batch` with each forwarded
    fresh row's old_logprobs replaced by the trainer's and its engine log-probs kept as
    behaviour_logprobs (the gap and TIS then read them as for a fresh row); the (4, N)
    engine-vs-trainer gap of those rows (zeros elsewhere); and the completion tokens and
    positions scored. Under torchrun every rank runs as many forwards (idle ones where short).
    """
    rollouts = list(batch.rollouts)
    gap_rows = torch.zeros(4, len(rollouts))
    device = next(model.parameters()).device
    fresh = _forwarded(rollouts[:batch.num_fresh], opts, kl_on)
    layout = choose_layout(opts.layout, model)
    plan = [[fresh[j] for j in mb] for mb in micro_batches([rollouts[i] for i in fresh], opts.token_budget)]
    if distributed.active():
        lengths = [r.prompt_ids.numel() + r.completion_ids.numel() for r in rollouts]
        plan = distributed.same_micro_batch_count(plan, lengths, max(distributed.gather(len(plan))))
    for rows in plan:
        if not rows:
            distributed.idle_pass(model, None, opts.pad_id, device, backward=False)
            continue
        mb = [rollouts[i] for i in rows]
        cb = CompletionBatch.build([r.prompt_ids for r in mb], [r.completion_ids for r in mb], opts.pad_id).to(device)
        dtype = opts.autocast_dtype
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logp = completion_logprobs(model, cb, opts.temperature, opts.chunk_size, layout).float()
        behaviour = [engine_logprobs(r, True, opts.old_logprobs) for r in mb]
        engine = right_pad(behaviour, cb.mask.shape[1], 0.0, torch.float32).to(device)
        gap = logprob_gap(logp, engine, cb.mask)
        gap_rows[:, torch.tensor(rows)] = torch.stack([gap["abs_sum"], gap["abs_max"], gap["k3_sum"],
                                                       gap["tokens"]]).cpu()
        logp = logp.cpu()
        for row, (i, r) in enumerate(zip(rows, mb)):
            rollouts[i] = dataclasses.replace(r, old_logprobs=logp[row, :r.num_tokens].clone(),
                                              behaviour_logprobs=behaviour[row])
    tokens = sum(rollouts[i].num_tokens for i in fresh)
    positions = tokens + sum(rollouts[i].prompt_ids.numel() for i in fresh)
    return rollouts, gap_rows, tokens, positions


def update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: UpdateBatch, opts: UpdateOptions,
           ref_model: torch.nn.Module | None = None, order_seed: int = 0) -> UpdateResult:
    """`opts.mini_batches` clipped optimiser steps on one composed batch (`update_step` when 1).

    The rows are shuffled (a generator seeded with `order_seed`: the same order on resume)
    and split into N near-equal parts, each an `update_step` against pi_old fixed before the
    first: the stored one for replayed rows and in engine mode, else `score_pi_old`'s. The
    result holds each row's metrics from the step that trained it, the fresh rows' gap from
    the scoring pass (the later steps' forwards have moved), and the mean loss, KL and grad norm.
    """
    n = opts.mini_batches
    if n == 1:
        return update_step(model, optimizer, batch, opts, ref_model)
    rollouts, num_fresh = batch.rollouts, batch.num_fresh
    kl_on = ref_model is not None and opts.kl_coef > 0
    scored_gap, scored_tokens, scored_positions = None, 0, 0
    if opts.old_logprobs == "trainer":
        rollouts, scored_gap, scored_tokens, scored_positions = score_pi_old(model, batch, opts, kl_on)
    order = torch.randperm(len(rollouts), generator=torch.Generator().manual_seed(order_seed))
    parts = [p.tolist() for p in order.tensor_split(n)]
    # Every row now carries its pi_old, so each part is "all replayed" to update_step.
    results = [update_step(model, optimizer, UpdateBatch([rollouts[i] for i in part], num_fresh=0), opts, ref_model)
               for part in parts]
    row_clip, row_ratio, row_tokens = torch.zeros(len(rollouts)), torch.zeros(len(rollouts)), torch.zeros(len(rollouts))
    row_gap = torch.zeros(4, len(rollouts))
    row_tis = torch.zeros(3, len(rollouts)) if opts.tis_cap else None
    for part, res in zip(parts, results):
        at = torch.tensor(part, dtype=torch.long)
        row_clip[at], row_ratio[at], row_tokens[at] = res.row_clip_count, res.row_ratio_sum, res.row_tokens
        row_gap[:, at] = res.row_gap
        if row_tis is not None:
            row_tis[:, at] = res.row_tis
    if scored_gap is not None:
        row_gap[:, :num_fresh] = scored_gap[:, :num_fresh]
    return UpdateResult(
        loss=sum(r.loss for r in results) / n, grad_norm=sum(r.grad_norm for r in results) / n,
        skipped=any(r.skipped for r in results), fresh_logprobs=[r.old_logprobs for r in rollouts[:num_fresh]],
        kl=sum(r.kl for r in results) / n, row_clip_count=row_clip, row_ratio_sum=row_ratio, row_tokens=row_tokens,
        row_gap=row_gap, row_tis=row_tis, rows_skipped=sum(r.rows_skipped for r in results),
        idle_passes=sum(r.idle_passes for r in results), optimizer_steps=sum(r.optimizer_steps for r in results),
        scored_tokens=scored_tokens, scored_positions=scored_positions)
