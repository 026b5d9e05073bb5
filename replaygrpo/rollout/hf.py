"""Sampling with the trainer's own transformers module, on CPU or GPU: weight sync is free.

A short loop rather than `generate`: each prompt is forwarded once and its KV cache
repeated for its G completions (`generate` prefills every copy), and the sampled
token's log-prob comes from the logits the loop already holds. That log-prob is
log_softmax(logits / temperature) at the token, the quantity the trainer computes, so
the two agree up to floating-point noise.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel

from replaygrpo import distributed
from replaygrpo.config import EngineConfig
from replaygrpo.forward import PromptBatch, prefill
from replaygrpo.records import Completion, SamplingParams
from replaygrpo.rollout.engine import EngineSetup, register_engine


class HFEngine:
    def __init__(self, model: PreTrainedModel, eos_token_id: int, pad_token_id: int, batch_size: int = 256,
                 stop_token_ids: list[int] | None = None, autocast_dtype: torch.dtype | None = None):
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

    def close(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        per_call = max(1, self.batch_size // params.n)
        out: list[list[Completion]] = []
        with distributed.full_params(self.model):  # under FSDP2: every token's forward stays local
            for start in range(0, len(prompts), per_call):
                out.extend(self._generate_chunk(prompts[start:start + per_call], params))
        return out

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        autocast = torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                                  enabled=self.autocast_dtype is not None)
        try:
            with autocast:
                tokens, logprobs = self._sample(PromptBatch.build(prompts, self.pad).to(device), params)
        finally:
            self.model.train(was_training)
        return self._completions(tokens.cpu(), logprobs.cpu(), len(prompts), params)

    def _sample(self, prompts: PromptBatch, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        """(N*n, T) sampled tokens (pad after a stop token) and their log-probs.

        Each prompt is forwarded once and its KV cache repeated for its n completions.
        """
        n_rows = prompts.ids.shape[0] * params.n
        device = prompts.ids.device
        rows = torch.arange(prompts.ids.shape[0], device=device).repeat_interleave(params.n)
        last, cache = prefill(self.model, prompts, rows)
        logits = last[rows]
        # Every step attends to the prompt and all tokens so far: one mask, sliced per step.
        mask = torch.cat([prompts.mask[rows], prompts.mask.new_ones(n_rows, params.max_new_tokens)], dim=1)
        width = prompts.ids.shape[1]
        position = prompts.lengths[rows]
        stop = torch.tensor(self.stop_ids, device=device)
        done = torch.zeros(n_rows, dtype=torch.bool, device=device)
        tokens, logprobs = [], []
        for t in range(params.max_new_tokens):
            token, logp = _pick(logits, params)
            token = torch.where(done, self.pad, token)
            tokens.append(token)
            logprobs.append(logp)
            done |= torch.isin(token, stop)
            if t + 1 == params.max_new_tokens or bool(done.all()):
                break
            logits = self.model(input_ids=token[:, None], attention_mask=mask[:, :width + t + 1],
                                position_ids=position[:, None],
                                past_key_values=cache, use_cache=True).logits[:, -1]
            position = position + 1
        return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)

    def _completions(self, new: torch.Tensor, logprobs: torch.Tensor, num_prompts: int,
                     params: SamplingParams) -> list[list[Completion]]:
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


@register_engine("hf")
def build_hf(model: PreTrainedModel, settings: EngineConfig, setup: EngineSetup) -> HFEngine:
    """The HF engine reads only `engine.batch_size`; temperature etc. come with each call."""
    return HFEngine(model, setup.eos_token_id, setup.pad_token_id, settings.batch_size, setup.stop_token_ids,
                    setup.autocast_dtype)


def _pick(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its log-prob log_softmax(logits / T) (zeros when greedy).

    Top-p draws from the nucleus, but the log-prob stays that of the untruncated
    distribution, the quantity the trainer computes.
    """
    if params.temperature == 0:
        token = logits.argmax(dim=-1)
        return token, torch.zeros(token.shape, dtype=torch.float32, device=logits.device)
    logp = torch.log_softmax(logits.float() / params.temperature, dim=-1)
    probs = logp.exp()
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the most likely token always).
        outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= params.top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    token = torch.multinomial(probs, 1).squeeze(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)
