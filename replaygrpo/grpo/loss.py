"""The clipped policy loss (DESIGN step 8), a pure function of tensors.

Per valid token (b, t), with r = exp(logp - old_logp) and A = advantages[b]:

    pg[b, t] = w[b, t] * max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))
    kl[b, t] = exp(ref - logp) - (ref - logp) - 1                  (k3 estimator)
    loss     = agg(pg) + kl_coef * agg(kl)

w is 1, or the truncated importance-sampling weight described in `policy_loss`.
Departures from the paper / from verl, all deliberate:
- log-ratios are clamped to [-20, 20] before `exp` (as verl does) so one stale token
  cannot overflow the batch; beyond that range the ratio has no gradient.
- padding (mask == 0) is removed with `torch.where`, not by multiplying, so NaN or
  inf in padded positions of logp never reach the loss or the gradient.
- the TIS weight multiplies the surrogate term only, not the KL term.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from replaygrpo.registry import Registry

_LOG_RATIO_CLAMP = 20.0

# An aggregation's reduction maps (values (B,T), mask (B,T) bool, norm_len) -> 0-dim loss.
AggFn = Callable[[Tensor, Tensor, "int | None"], Tensor]
# Its micro-batch share maps (mask (b,T) bool of one micro-batch, tokens in the whole batch,
# sequences in the whole batch) -> the weight that makes the micro-batches' weighted losses
# add up to the loss of the whole batch.
ShareFn = Callable[[Tensor, int, int], float]


@dataclass(frozen=True)
class Aggregation:
    """A loss aggregation: its reduction and the weight of one micro-batch in the batch loss."""

    name: str
    reduce: AggFn
    share: ShareFn


LOSS_AGGS: Registry[Aggregation] = Registry("loss.agg")


def token_share(mask: Tensor, batch_tokens: int, batch_seqs: int) -> float:
    """A per-token mean over the batch: a micro-batch counts by its valid tokens."""
    return int(mask.sum()) / max(batch_tokens, 1)


def sequence_share(mask: Tensor, batch_tokens: int, batch_seqs: int) -> float:
    """A per-sequence mean over the batch: a micro-batch counts by its rows."""
    return mask.shape[0] / max(batch_seqs, 1)


def register_agg(name: str, share: ShareFn) -> Callable[[AggFn], AggFn]:
    """Decorator adding a loss aggregation under `name`, with its micro-batch share."""

    def deco(fn: AggFn) -> AggFn:
        LOSS_AGGS.add(name, Aggregation(name, fn, share))
        return fn

    return deco


def get_agg(name: str) -> Aggregation:
    """Look up a registered aggregation; the error (ConfigError) names `loss.agg` and the valid names."""
    return LOSS_AGGS.get(name)


def _no_norm_len(name: str, norm_len: int | None) -> None:
    if norm_len is not None:
        raise ValueError(f"norm_len applies to 'seq_mean_token_sum' only, not {name!r}")


def _seq_sums(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B,T) values and bool mask -> per-row sums over valid tokens (B,), token counts (B,)."""
    vals = torch.where(mask, values, torch.zeros_like(values))
    return vals.sum(-1), mask.sum(-1).to(values.dtype)


@register_agg("token_mean", share=token_share)
def _token_mean(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    """Sum over every valid token of the batch / number of valid tokens in the batch."""
    _no_norm_len("token_mean", norm_len)
    sums, n = _seq_sums(values, mask)
    return sums.sum() / n.sum().clamp(min=1)


@register_agg("seq_mean_token_mean", share=sequence_share)
def _seq_mean_token_mean(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    """Mean over non-empty sequences of each sequence's mean over its valid tokens."""
    _no_norm_len("seq_mean_token_mean", norm_len)
    sums, n = _seq_sums(values, mask)
    nonempty = n > 0
    per_seq = torch.where(nonempty, sums / n.clamp(min=1), torch.zeros_like(sums))
    return per_seq.sum() / nonempty.sum().clamp(min=1)


@register_agg("seq_mean_token_sum", share=sequence_share)
def _seq_mean_token_sum(values: Tensor, mask: Tensor, norm_len: int | None = None) -> Tensor:
    """Dr. GRPO: mean over non-empty sequences of each sequence's token sum.

    With `norm_len` (a constant, typically the maximum completion length) the result is
    further divided by it, so the scale does not depend on how long the answers are.
    """
    sums, n = _seq_sums(values, mask)
    loss = sums.sum() / (n > 0).sum().clamp(min=1)
    return loss / norm_len if norm_len is not None else loss


def aggregate(values: Tensor, mask: Tensor, agg: str = "token_mean", norm_len: int | None = None) -> Tensor:
    """Reduce per-token values (B,T) over the valid tokens of mask (B,T) to a 0-dim tensor."""
    return get_agg(agg).reduce(values, mask.bool(), norm_len)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token_mean",
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    tis_cap: float | None = None,
    behaviour_logp: Tensor | None = None,
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with GRPO advantages.

    Args:
        logp: (B,T) log-probs of the completion tokens under the current policy (grad).
        old_logp: (B,T) log-probs under the weights that generated the rollout (pi_old).
        advantages: (B,) one advantage per sequence, broadcast over its tokens.
        mask: (B,T) bool or 0/1 float, 1 on completion tokens that count.
        clip_low, clip_high: ratio clipped to [1 - clip_low, 1 + clip_high].
        agg: a name in `LOSS_AGGS`: "token_mean", "seq_mean_token_mean",
            "seq_mean_token_sum" (with optional constant divisor `norm_len`).
        ref_logp: (B,T) reference-model log-probs; gives the "kl" metric.
        kl_coef: weight of the k3 KL term in the loss (needs `ref_logp` when non-zero).
        tis_cap, behaviour_logp: truncated importance sampling for engine/trainer
            mismatch. When `behaviour_logp` (B,T) is given (the generation engine's
            log-probs of the sampled tokens) and `old_logp` are the trainer's log-probs
            under the same weights, each token's surrogate is multiplied by the constant
            w = min(exp(old_logp - behaviour_logp), tis_cap), detached; `tis_cap=None`
            means no truncation. Without `behaviour_logp`, w = 1 and `tis_cap` is unused.
        norm_len: constant divisor for "seq_mean_token_sum" (Dr. GRPO); error otherwise.

    Returns:
        loss: 0-dim tensor to minimise.
        metrics: detached tensors. 0-dim: "pg_loss", "clip_fraction" (share of valid
        tokens whose clipped branch is active, i.e. whose gradient clipping zeroes),
        "ratio_mean" (over valid tokens), "kl" (if `ref_logp`), "tis_weight_mean" (if
        `behaviour_logp`). (B,): "seq_clip_count", "seq_ratio_sum", "seq_tokens", so the
        caller can split clip fraction and ratio by rollout age; with `behaviour_logp` also
        "seq_tis_sum", "seq_tis_max" (0 for a row with no valid token) and
        "seq_tis_truncated" (tokens whose weight the cap lowered).
    """
    mask = mask.bool()
    zeros = torch.zeros_like(logp)

    def masked_log_diff(a: Tensor, b: Tensor) -> Tensor:
        # (B,T) a - b on valid tokens, 0 on padding; clamped so exp never overflows.
        return torch.where(mask, a - b, zeros).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)

    adv = advantages.to(logp.dtype).unsqueeze(-1)  # (B,1)
    ratio = torch.exp(masked_log_diff(logp, old_logp))  # (B,T), 1 on padding
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    # The clipped branch wins only when it is strictly larger; there the loss is a
    # constant in logp, so the token gets exactly zero gradient.
    is_clipped = (clipped > unclipped) & mask  # (B,T)
    pg = torch.where(is_clipped, clipped, unclipped)

    metrics: dict[str, Tensor] = {}
    if behaviour_logp is not None:
        raw = torch.exp(masked_log_diff(old_logp, behaviour_logp)).detach()
        w = raw.clamp(max=tis_cap) if tis_cap is not None else raw
        pg = pg * w
        metrics["tis_weight_mean"] = aggregate(w, mask, "token_mean")
        metrics["seq_tis_sum"] = torch.where(mask, w, zeros).sum(-1)
        metrics["seq_tis_max"] = torch.where(mask, w, zeros).amax(-1)
        metrics["seq_tis_truncated"] = ((raw > w) & mask).sum(-1).to(logp.dtype)

    agg_fn = get_agg(agg).reduce
    pg_loss = agg_fn(pg, mask, norm_len)
    loss = pg_loss
    if ref_logp is not None:
        d = masked_log_diff(ref_logp, logp)
        kl = agg_fn(torch.exp(d) - d - 1.0, mask, norm_len)
        loss = loss + kl_coef * kl
        metrics["kl"] = kl.detach()
    elif kl_coef != 0.0:
        raise ValueError("kl_coef is non-zero but ref_logp is None")

    with torch.no_grad():
        seq_tokens = mask.sum(-1).to(logp.dtype)  # (B,)
        seq_clip = is_clipped.sum(-1).to(logp.dtype)  # (B,)
        seq_ratio = torch.where(mask, ratio, zeros).sum(-1)  # (B,)
        n = seq_tokens.sum().clamp(min=1)
        metrics.update(
            pg_loss=pg_loss.detach(),
            clip_fraction=seq_clip.sum() / n,
            ratio_mean=seq_ratio.sum() / n,
            seq_clip_count=seq_clip,
            seq_ratio_sum=seq_ratio,
            seq_tokens=seq_tokens,
        )
    return loss, metrics
