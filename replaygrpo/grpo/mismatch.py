"""The engine-vs-trainer gap: how far the generation engine's log-probs of the sampled
tokens are from the trainer's log-probs of the same tokens (a pure function of tensors).

With d = trainer - engine per token, the k3 estimator exp(d) - 1 - d averages to
KL(engine || trainer) over tokens the engine sampled (Schulman's approximation; d is
clamped to [-20, 20] first, as in the loss, so one wild token cannot overflow).
On a fresh rollout both sides score the same weights, so the gap is numerical mismatch
only (kernels, dtype, a stale sync); on a replayed one it also holds the policy's drift
since the rollout's birth.
"""
from __future__ import annotations

import torch
from torch import Tensor

_CLAMP = 20.0


@torch.no_grad()
def logprob_gap(trainer_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-row gap statistics over the valid tokens of `mask`.

    Args:
        trainer_logp, engine_logp: (B,T) log-probs of the sampled tokens.
        mask: (B,T) bool, the tokens to measure (a row with none gives zeros).

    Returns (B,) float32 tensors: "abs_sum" (sum of |d|), "abs_max" (largest |d|, 0 for
    an empty row), "k3_sum" (sum of exp(d) - 1 - d) and "tokens" (valid tokens).
    """
    mask = mask.bool()
    d = torch.where(mask, trainer_logp.float() - engine_logp.float(), torch.zeros((), device=mask.device))
    d = d.clamp(-_CLAMP, _CLAMP)  # 0 on padding, where every statistic below is then 0 too
    return {
        "abs_sum": d.abs().sum(-1),
        "abs_max": d.abs().amax(-1),
        "k3_sum": (torch.expm1(d) - d).sum(-1),
        "tokens": mask.sum(-1).float(),
    }
