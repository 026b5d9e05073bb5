"""Causal-LM forwards for sampling and for the update, without repeated or padded work.

A GRPO batch holds G completions of every prompt. Forwarding prompt + completion per
row repeats the prompt G times; here the distinct prompts go through the model once
(left-padded, KV cache kept), the cache is gathered to one row per completion, and
only the completion positions are forwarded on top of it. Gradients flow back through
the gathered cache into the shared prompt forward, so values and gradients equal the
full per-row forward (tests/test_forward.py). The gather is an index, so replayed
rollouts of one prompt from different steps share its forward too. Where the KV cache
cannot be kept (gradient checkpointing, several processes), `packed` puts the rows back to
back without padding, or `padded` pads them (see `choose_layout`).

Layout: prompts (U, Wp) left-padded, completions (B, C) right-padded, row_prompt (B,)
the prompt of each row. The logit that scores completion token j of row b is the last
prompt position's for j = 0 and completion position j - 1's after that.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from replaygrpo.grpo import token_logprobs


@dataclass
class PromptBatch:
    """Distinct prompts, left-padded so every last prompt token sits in the last column."""

    ids: Tensor  # (U, Wp) long
    mask: Tensor  # (U, Wp) long, 1 on prompt tokens
    lengths: Tensor  # (U,) long

    @classmethod
    def build(cls, prompts: list[Tensor] | list[list[int]], pad_id: int) -> PromptBatch:
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        width = int(lengths.max())
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        return cls(ids, mask, lengths)

    def to(self, device: torch.device) -> PromptBatch:
        return PromptBatch(self.ids.to(device), self.mask.to(device), self.lengths.to(device))


@dataclass
class CompletionBatch:
    prompts: PromptBatch
    row_prompt: Tensor  # (B,) long, index into prompts
    ids: Tensor  # (B, C) long, right-padded
    mask: Tensor  # (B, C) bool, True on completion tokens

    @classmethod
    def build(cls, prompts: list[Tensor], completions: list[Tensor], pad_id: int) -> CompletionBatch:
        """Rows (prompt_i, completion_i); identical prompts are stored once."""
        index: dict[bytes, int] = {}
        distinct: list[Tensor] = []
        row_prompt = []
        for p in prompts:
            key = p.to(torch.int32).numpy().tobytes()
            if key not in index:
                index[key] = len(distinct)
                distinct.append(p)
            row_prompt.append(index[key])
        width = max(1, max(int(c.numel()) for c in completions))
        ids = right_pad(completions, width, pad_id, torch.long)
        lengths = torch.tensor([c.numel() for c in completions])
        mask = torch.arange(width) < lengths[:, None]
        return cls(PromptBatch.build(distinct, pad_id), torch.tensor(row_prompt, dtype=torch.long), ids, mask)

    def to(self, device: torch.device) -> CompletionBatch:
        return CompletionBatch(self.prompts.to(device), self.row_prompt.to(device), self.ids.to(device),
                               self.mask.to(device))

    def positions(self) -> int:
        """Token positions the shared-prefix forward computes (padding included)."""
        return self.prompts.ids.numel() + self.ids.shape[0] * (self.ids.shape[1] - 1)


def right_pad(rows: list[Tensor], width: int, value: float, dtype: torch.dtype) -> Tensor:
    """(len(rows), width) of `dtype`: row i holds rows[i], then `value`."""
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :r.numel()] = r
    return out


def _positions(mask: Tensor) -> Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def prefill(model: torch.nn.Module, prompts: PromptBatch, rows: Tensor):
    """Forward the distinct prompts once; return (last-position logits (U, V), cache gathered to `rows`)."""
    out = model(input_ids=prompts.ids, attention_mask=prompts.mask, position_ids=_positions(prompts.mask),
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    if cache is None:  # transformers drops the cache under gradient checkpointing in training
        raise ValueError("the shared-prefix forward needs a KV cache, which gradient checkpointing drops; "
                         "use trainer.update_layout=auto, packed or padded")
    cache.batch_select_indices(rows)
    return out.logits[:, -1], cache


LAYOUTS = ("shared_prefix", "packed", "padded")


def choose_layout(layout: str, model: torch.nn.Module) -> str:
    """Resolve "auto": shared_prefix, or where no KV cache can be kept (gradient
    checkpointing, several processes) packed where the attention has varlen kernels (flash
    attention) and padded where it would need a dense (T, T) mask."""
    from replaygrpo import distributed

    # Under FSDP every rank must run the same forwards per micro-batch; shared_prefix runs
    # one or two (one when every completion has a single token).
    if layout == "shared_prefix" and distributed.active():
        raise ValueError("trainer.update_layout=shared_prefix is not supported under torchrun; "
                         "use auto, packed or padded")
    if layout != "auto":
        return layout
    if not distributed.active() and not getattr(model, "is_gradient_checkpointing", False):
        return "shared_prefix"
    attn = str(getattr(getattr(model, "config", None), "_attn_implementation", ""))
    return "packed" if attn.startswith("flash") else "padded"


def completion_logprobs(model: torch.nn.Module, batch: CompletionBatch, temperature: float,
                        chunk_size: int | None = None, layout: str = "shared_prefix") -> Tensor:
    """(B, C) float32 log-probs of each completion token at `temperature` (padding: arbitrary).

    layout: "shared_prefix" (each distinct prompt once, completions on its KV cache);
    "packed" (every row's prompt + completion back to back in one padding-free row, which
    transformers splits by the restarting position ids: varlen kernels under flash
    attention, a block-diagonal mask under sdpa); "padded" (one padded row each). The last
    two keep no KV cache, so they work under gradient checkpointing.
    """
    if layout == "shared_prefix":
        return _shared_prefix(model, batch, temperature, chunk_size)
    if layout == "packed":
        return _packed(model, batch, temperature, chunk_size)
    if layout != "padded":
        raise ValueError(f"unknown forward layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    p, rows, ids, mask = batch.prompts, batch.row_prompt, batch.ids, batch.mask
    full_mask = torch.cat([p.mask[rows], mask.long()], dim=1)
    full_ids = torch.cat([p.ids[rows], ids], dim=1)
    logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=_positions(full_mask),
                   use_cache=False).logits
    width = p.ids.shape[1]
    return token_logprobs(logits[:, width - 1:width - 1 + ids.shape[1]], ids, temperature, chunk_size)


def _shared_prefix(model: torch.nn.Module, batch: CompletionBatch, temperature: float,
                   chunk_size: int | None) -> Tensor:
    p, rows, ids, mask = batch.prompts, batch.row_prompt, batch.ids, batch.mask
    first, cache = prefill(model, p, rows)
    out = [token_logprobs(first[rows][:, None], ids[:, :1], temperature, chunk_size)]
    if ids.shape[1] > 1:
        # The last completion token scores nothing, so it is never forwarded.
        inputs = ids[:, :-1]
        attn = torch.cat([p.mask[rows], mask[:, :-1].long()], dim=1)
        pos = p.lengths[rows, None] + torch.arange(inputs.shape[1], device=ids.device)
        logits = model(input_ids=inputs, attention_mask=attn, position_ids=pos, past_key_values=cache,
                       use_cache=True).logits
        out.append(token_logprobs(logits, ids[:, 1:], temperature, chunk_size))
    return torch.cat(out, dim=1)


def _packed(model: torch.nn.Module, batch: CompletionBatch, temperature: float,
            chunk_size: int | None) -> Tensor:
    p, rows, ids, mask = batch.prompts, batch.row_prompt, batch.ids, batch.mask
    device = ids.device
    width = p.ids.shape[1]
    pieces, positions, scored = [], [], []
    start = 0
    for b, (pl, cl) in enumerate(zip(p.lengths[rows].tolist(), mask.sum(1).tolist())):
        seq = torch.cat([p.ids[rows[b], width - pl:], ids[b, :max(cl - 1, 0)]])
        pieces.append(seq)
        positions.append(torch.arange(seq.numel(), device=device))
        scored.append(start + pl - 1 + torch.arange(cl, device=device))
        start += seq.numel()
    flat_scored = torch.cat(scored)
    # attention_mask=None is what makes transformers read the sequence breaks from position_ids.
    logits = model(input_ids=torch.cat(pieces)[None], position_ids=torch.cat(positions)[None],
                   use_cache=False, logits_to_keep=flat_scored).logits  # (1, N, V)
    logp = token_logprobs(logits, ids[mask][None], temperature, chunk_size)[0]
    out = torch.zeros(ids.shape, dtype=logp.dtype, device=device)
    return out.masked_scatter(mask, logp)


@torch.no_grad()
def score(model: torch.nn.Module, prompts: list[Tensor], completions: list[Tensor], pad_id: int,
          temperature: float = 1.0, layout: str = "shared_prefix", chunk_size: int | None = None) -> list[Tensor]:
    """Each completion's (C_i,) float32 token log-probs under `model`, through the update's forward
    (`chunk_size`: tokens per chunk of the log-softmax; None = one piece)."""
    device = next(model.parameters()).device
    batch = CompletionBatch.build(prompts, completions, pad_id).to(device)
    logp = completion_logprobs(model, batch, temperature, chunk_size, layout=layout).float().cpu()
    return [logp[i, :c.numel()] for i, c in enumerate(completions)]
