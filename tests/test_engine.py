"""The HF engine: behaviour log-probs equal the trainer's, stop tokens end completions."""
from __future__ import annotations

import pytest
import torch

from replaygrpo.config import Config
from replaygrpo.rollout.hf import HFEngine
from replaygrpo.rollout.types import Rollout, SamplingParams
from replaygrpo.toymodel import build_model, build_tokenizer
from replaygrpo.update import _pad, sequence_token_logprobs


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    tok = build_tokenizer()
    return build_model(Config(), len(tok), tok.eos_token_id), tok


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_match_trainer(toy, temperature):
    model, tok = toy
    engine = HFEngine(model, tok.eos_token_id, tok.pad_token_id)
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in ("Question: 3 + 4 = ?\nAnswer: ", "1 =", "12 + 345 + 6 = ?")]
    groups = engine.generate(prompts, SamplingParams(n=3, temperature=temperature, max_new_tokens=6, seed=1))
    rollouts = [Rollout(torch.tensor(p, dtype=torch.int32), c.token_ids, c.logprobs, 0.0, 1.0, 0, 0, 0)
                for p, g in zip(prompts, groups) for c in g]
    ids, attn, comp, old = _pad(rollouts, tok.pad_token_id)
    with torch.no_grad():
        trainer = sequence_token_logprobs(model, ids, attn, temperature)
    assert comp.sum() > 0
    assert torch.allclose(trainer[comp], old[comp], atol=1e-4)


def test_same_seed_same_samples_and_stop_tokens(toy):
    model, tok = toy
    prompt = [tok("Question: 1 + 1 = ?\nAnswer: ", add_special_tokens=False)["input_ids"]]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=3)
    a = HFEngine(model, tok.eos_token_id, tok.pad_token_id).generate(prompt, params)[0]
    b = HFEngine(model, tok.eos_token_id, tok.pad_token_id).generate(prompt, params)[0]
    assert all(torch.equal(x.token_ids, y.token_ids) for x, y in zip(a, b))
    # Make every token a stop token: each completion stops after its first token.
    stop_all = HFEngine(model, tok.eos_token_id, tok.pad_token_id, stop_token_ids=list(range(len(tok))))
    for c in stop_all.generate(prompt, params)[0]:
        assert c.token_ids.numel() == 1 and c.finish_reason == "stop"
    for c in a:
        assert c.finish_reason == ("stop" if c.token_ids[-1] == tok.eos_token_id else "length")
        assert c.finish_reason == "stop" or c.token_ids.numel() == 8
