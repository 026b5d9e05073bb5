"""Generation with transformers' `generate`, on CPU or GPU, sharing weights with the trainer.

The behaviour log-prob of a sampled token is log_softmax(logits / temperature) at that
token, the same quantity the trainer computes, so with top_p = 1 they agree up to
floating-point noise. Sharing the module with the trainer makes weight sync free.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from replaygrpo.rollout.engine import register_engine
from replaygrpo.rollout.types import Completion, SamplingParams


@register_engine("hf")
class HFEngine:
    def __init__(self, model: PreTrainedModel, eos_token_id: int, pad_token_id: int, batch_size: int = 256,
                 cfg: object = None, stop_token_ids: list[int] | None = None,
                 autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.eos = eos_token_id
        # Every token that ends a completion (e.g. <|im_end|> as well under a ChatML prompt).
        self.stop_ids = sorted({eos_token_id, *(stop_token_ids or [])})
        self.pad = pad_token_id
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def sleep(self) -> None:
        pass  # the trainer's own module: nothing to free

    def metrics(self) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        per_call = max(1, self.batch_size // params.n)
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), per_call):
            out.extend(self._generate_chunk(prompts[start:start + per_call], params))
        return out

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        device = next(self.model.parameters()).device
        width = max(map(len, prompts))
        # Left padding keeps every prompt's last token at the same column for generate.
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        greedy = params.temperature == 0
        was_training = self.model.training
        self.model.eval()
        autocast = torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                                  enabled=self.autocast_dtype is not None)
        with autocast:
            gen = self._call_generate(ids.to(device), mask.to(device), params, greedy)
        self.model.train(was_training)
        return self._completions(gen, width, len(prompts), params, greedy)

    def _call_generate(self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams, greedy: bool):
        return self.model.generate(
            input_ids=ids, attention_mask=mask,
            do_sample=not greedy, temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p, top_k=None if greedy else 0,
            max_new_tokens=params.max_new_tokens, num_return_sequences=params.n,
            eos_token_id=self.stop_ids, pad_token_id=self.pad,
            output_logits=not greedy, return_dict_in_generate=True,
        )

    def _completions(self, gen, width: int, num_prompts: int, params: SamplingParams,
                     greedy: bool) -> list[list[Completion]]:
        new = gen.sequences[:, width:].cpu()
        if greedy:
            logprobs = torch.zeros(new.shape, dtype=torch.float32)
        else:
            # One step at a time: never a (N, T, V) float copy of the logits.
            tokens = gen.sequences[:, width:]
            logprobs = torch.stack([
                torch.log_softmax(step.float() / params.temperature, dim=-1).gather(-1, tokens[:, t:t + 1]).squeeze(-1)
                for t, step in enumerate(gen.logits)], dim=1).cpu()
        is_eos = torch.isin(new, torch.tensor(self.stop_ids))
        has_eos = is_eos.any(dim=1)
        lengths = torch.where(has_eos, is_eos.int().argmax(dim=1) + 1, torch.full_like(has_eos, new.shape[1], dtype=torch.long))
        groups: list[list[Completion]] = []
        for i in range(num_prompts):
            group = []
            for j in range(params.n):
                r = i * params.n + j
                n = int(lengths[r])
                group.append(Completion(
                    token_ids=new[r, :n].to(torch.int32), logprobs=logprobs[r, :n].float(),
                    finish_reason="stop" if bool(has_eos[r]) else "length"))
            groups.append(group)
        return groups
