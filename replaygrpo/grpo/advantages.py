"""Group-relative advantages (DESIGN step 3).

A_i = (r_i - mean(r_group)) / (std(r_group) + eps) with scale="std" (GRPO), or
A_i = r_i - mean(r_group) with scale="none" (Dr. GRPO, no std division).

Departures from the paper, all deliberate:
- std is the *unbiased* sample std (divide by n - 1), as `torch.std` does by default
  and as verl's `compute_grpo_outcome_advantage` uses.
- A group whose rewards are all equal gets an advantage of exactly 0.0 (not a value
  of order 1e-17 left by floating-point rounding of the mean), so the replay buffer
  can test `A == 0` to drop rollouts that carry no gradient. A group of size 1 is
  such a group (its unbiased std is undefined), so it gets 0 too.
- Group ids are arbitrary integers in any order; groups may have different sizes
  (a group may be split across steps by the buffer, or lose failed completions).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from replaygrpo.registry import Registry

# A scale maps (centred rewards (N,), per-row group std (N,), eps) -> advantages (N,).
ScaleFn = Callable[[Tensor, Tensor, float], Tensor]
ADVANTAGE_SCALES: Registry[ScaleFn] = Registry("loss.adv_scale")


def register_scale(name: str) -> Callable[[ScaleFn], ScaleFn]:
    """Decorator adding an advantage scale under `name`."""
    return ADVANTAGE_SCALES.register(name)


def get_scale(name: str) -> ScaleFn:
    """Look up a registered scale; the error (ConfigError) names `loss.adv_scale` and the valid names."""
    return ADVANTAGE_SCALES.get(name)


@register_scale("std")
def _scale_std(centred: Tensor, std: Tensor, eps: float) -> Tensor:
    return centred / (std + eps)


@register_scale("none")
def _scale_none(centred: Tensor, std: Tensor, eps: float) -> Tensor:
    return centred


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    scale: str = "std",
    eps: float = 1e-6,
) -> Tensor:
    """Group-normalised advantage of each completion.

    Args:
        rewards: (N,) float, one scalar reward per completion.
        group_ids: (N,) long, completions with the same id form one group; ids need
            not be contiguous or sorted.
        scale: a name in `ADVANTAGE_SCALES`: "std" (GRPO) or "none" (Dr. GRPO).
        eps: added to the group std before dividing ("std" only).

    Returns:
        (N,) advantages, in `rewards`' dtype (float32 if `rewards` is not floating).
        Exactly 0.0 for every member of a group whose rewards are all equal.
    """
    scale_fn = get_scale(scale)
    if rewards.ndim != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards and group_ids must both be (N,); got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=out_dtype, device=rewards.device)
    # Accumulate in float64: sums of squares over small groups, no loss of precision.
    r = rewards.to(torch.float64)
    _, inv = torch.unique(group_ids, return_inverse=True)  # (N,) dense ids 0..K-1
    k = int(inv.max()) + 1
    count = torch.zeros(k, dtype=torch.float64, device=r.device).index_add_(
        0, inv, torch.ones_like(r)
    )  # (K,)
    mean = torch.zeros_like(count).index_add_(0, inv, r) / count  # (K,)
    centred = r - mean[inv]  # (N,)
    sq = torch.zeros_like(count).index_add_(0, inv, centred * centred)  # (K,)
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # (K,) unbiased; size-1 groups masked below
    hi = torch.full_like(count, -torch.inf).scatter_reduce_(0, inv, r, "amax")
    lo = torch.full_like(count, torch.inf).scatter_reduce_(0, inv, r, "amin")
    constant = (hi == lo)[inv]  # (N,) all rewards equal in this group (includes size 1)
    adv = scale_fn(centred, std[inv], eps)
    return torch.where(constant, torch.zeros_like(adv), adv).to(out_dtype)
