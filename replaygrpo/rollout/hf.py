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
    def __init__(self, model: PreTrainedModel, eos_token_id: int, pad_token_id: int, batch_size: int = 256, cfg: object = None):
        self.model = model
        self.eos = eos_token_id
        self.pad = pad_token_id
        self.batch_size = batch_size

    def sync_weights(self, model: torch.nn.Module) -> None:
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

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
        gen = self.model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device),
            do_sample=not greedy, temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p, top_k=None if greedy else 0,
            max_new_tokens=params.max_new_tokens, num_return_sequences=params.n,
            eos_token_id=self.eos, pad_token_id=self.pad,
            output_logits=not greedy, return_dict_in_generate=True,
        )
        self.model.train(was_training)
        new = gen.sequences[:, width:].cpu()
        if greedy:
            logprobs = torch.zeros(new.shape, dtype=torch.float32)
        else:
            logits = torch.stack(gen.logits, dim=1).float().cpu()  # (N, T, V)
            logprobs = torch.log_softmax(logits / params.temperature, dim=-1)
            logprobs = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        is_eos = new == self.eos
        has_eos = is_eos.any(dim=1)
        lengths = torch.where(has_eos, is_eos.int().argmax(dim=1) + 1, torch.full_like(has_eos, new.shape[1], dtype=torch.long))
        groups: list[list[Completion]] = []
        for i in range(len(prompts)):
            group = []
            for j in range(params.n):
                r = i * params.n + j
                n = int(lengths[r])
                group.append(Completion(
                    token_ids=new[r, :n].to(torch.int32), logprobs=logprobs[r, :n].float(),
                    finish_reason="stop" if bool(has_eos[r]) else "length"))
            groups.append(group)
        return groups
