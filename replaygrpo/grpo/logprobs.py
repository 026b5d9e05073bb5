"""Log-probs of chosen tokens without materialising a float32 (tokens x vocab) matrix.

Qwen3's vocabulary has 151,936 entries: a float32 log-softmax over 8k completion
tokens is 4.9 GB, plus as much again saved for backward. Both functions below work
chunk by chunk along the flattened token dimension, using
logp = logit[target] / T - logsumexp(logits / T), and give the same values and
gradients as the naive `log_softmax(logits.float() / T).gather(...)`.

- `token_logprobs` starts from logits the model already produced (B,T,V); a custom
  autograd function keeps only the logits and one logsumexp per token for backward
  and writes the gradient into one (B,T,V) buffer chunk by chunk.
- `sequence_logprobs_from_hidden` starts from final hidden states and the lm_head
  weight, so even the logits exist one chunk at a time; `torch.utils.checkpoint` per
  chunk makes backward recompute each chunk's logits instead of keeping them all.

Alignment is the caller's job: logits[:, t] must score targets[:, t] (shift by one).
Outputs are float32 whatever the input dtype.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _naive_logprobs(logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """(N,V), (N,) -> (N,) float32, the reference path (materialises (N,V) float32)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


class _ChunkedLogProbs(torch.autograd.Function):
    """(N,V) logits, (N,) targets -> (N,) float32 log-probs, chunk by chunk.

    d logp_i / d logits_ij = (onehot_ij - softmax_ij) / T, recomputed per chunk in
    backward from the saved logits and the (N,) logsumexp.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, temperature: float, chunk_size: int) -> Tensor:  # type: ignore[override]
        n = logits.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for s in range(0, n, chunk_size):
            x = logits[s : s + chunk_size].float() / temperature  # (c,V)
            lse[s : s + chunk_size] = torch.logsumexp(x, dim=-1)
            picked = x.gather(-1, targets[s : s + chunk_size, None]).squeeze(-1)
            out[s : s + chunk_size] = picked - lse[s : s + chunk_size]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logits, targets, lse = ctx.saved_tensors
        t, c = ctx.temperature, ctx.chunk_size
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], c):
            g = grad_out[s : s + c, None].float()  # (c,1)
            x = logits[s : s + c].float() / t
            d = torch.exp(x - lse[s : s + c, None]).mul_(-g)  # -softmax * g
            d.scatter_add_(-1, targets[s : s + c, None], g)  # + onehot * g
            grad[s : s + c] = d.div_(t)
        return grad, None, None, None


def token_logprobs(
    logits: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """log_softmax(logits / temperature) gathered at targets.

    Args:
        logits: (B,T,V) any float dtype; may require grad.
        targets: (B,T) token ids.
        temperature: the sampling temperature the tokens were drawn with.
        chunk_size: flattened tokens (of B*T) per chunk; None computes in one piece.

    Returns:
        (B,T) float32 log-probs, differentiable w.r.t. logits.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    b, t, v = logits.shape
    flat, tgt = logits.reshape(b * t, v), targets.reshape(b * t).long()
    if chunk_size is None:
        return _naive_logprobs(flat, tgt, temperature).view(b, t)
    return _ChunkedLogProbs.apply(flat, tgt, temperature, chunk_size).view(b, t)


def _chunk_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """(c,H) hidden, (V,H) weight, (c,) targets -> (c,) float32; (c,V) logits live only here."""
    return _naive_logprobs(hidden @ weight.T, targets, temperature)


def sequence_logprobs_from_hidden(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> Tensor:
    """Project hidden states to logits chunk by chunk and gather the targets' log-probs.

    Args:
        hidden: (N,H) final hidden states (after the last norm), flattened tokens.
        lm_head_weight: (V,H) the output projection (no bias, as in Qwen3).
        targets: (N,) token ids.
        temperature: the sampling temperature.
        chunk_size: tokens per chunk; peak extra memory is about chunk_size * V floats.

    Returns:
        (N,) float32 log-probs. With grad enabled, each chunk runs under
        `torch.utils.checkpoint`, so backward stores only the chunk's inputs and
        recomputes its logits; gradients equal the naive path's.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    targets = targets.long()
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    outs = []
    for h, tg in zip(hidden.split(chunk_size), targets.split(chunk_size)):
        if needs_grad:
            outs.append(checkpoint(_chunk_logprobs, h, lm_head_weight, tg, temperature, use_reentrant=False))
        else:
            outs.append(_chunk_logprobs(h, lm_head_weight, tg, temperature))
    if not outs:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(outs)
