"""The HF engine: behaviour log-probs equal the trainer's, stop tokens end completions."""
from __future__ import annotations

import pytest
import torch

from replaygrpo.config import Config
from replaygrpo.rollout.hf import HFEngine
from replaygrpo.records import SamplingParams
from replaygrpo.toymodel import build_model, build_tokenizer
from replaygrpo.forward import score


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
    completions = [c for g in groups for c in g]
    # The padded layout: no code shared with the engine's prefill.
    trainer = score(model, [torch.tensor(p) for p, g in zip(prompts, groups) for _ in g],
                    [c.token_ids for c in completions], tok.pad_token_id, temperature, layout="padded")
    assert sum(c.token_ids.numel() for c in completions) > 0
    torch.testing.assert_close(torch.cat(trainer), torch.cat([c.logprobs for c in completions]),
                               atol=1e-4, rtol=0)


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


@pytest.mark.parametrize("top_p", [1.0, 0.6])
def test_samples_follow_the_model_distribution(toy, top_p):
    """First tokens of 4,000 completions: frequencies match the model's (nucleus-renormalised)
    probabilities, nothing outside the nucleus is drawn, and the reported log-prob is the
    untruncated one."""
    model, tok = toy
    prompt = tok("Question: 7 + 5 = ?\nAnswer: ", add_special_tokens=False)["input_ids"]
    temperature, n = 0.3, 4000
    engine = HFEngine(model, tok.eos_token_id, tok.pad_token_id, batch_size=n)
    group = engine.generate([prompt], SamplingParams(n=n, temperature=temperature, top_p=top_p,
                                                     max_new_tokens=1, seed=5))[0]
    first = torch.tensor([int(c.token_ids[0]) for c in group])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1] / temperature
    probs = torch.softmax(logits.double(), -1)
    sorted_p, order = probs.sort(descending=True)
    keep = order[(sorted_p.cumsum(0) - sorted_p) < top_p]
    nucleus = torch.zeros_like(probs)
    nucleus[keep] = probs[keep] / probs[keep].sum()
    counts = torch.bincount(first, minlength=probs.numel()).double()
    assert counts[nucleus == 0].sum() == 0
    expected = nucleus * n
    for t in torch.nonzero(expected >= 20).flatten():
        assert abs(counts[t] - expected[t]) <= 5 * expected[t].sqrt(), int(t)
    assert len(torch.nonzero(expected >= 20)) >= 2  # the check above compares something
    reported = torch.tensor([float(c.logprobs[0]) for c in group], dtype=torch.float64)
    torch.testing.assert_close(reported, probs[first].log(), atol=1e-4, rtol=0)


def test_bf16_sampling_restores_train_mode_and_matches_the_trainer(toy):
    model, tok = toy
    model.train()
    engine = HFEngine(model, tok.eos_token_id, tok.pad_token_id, autocast_dtype=torch.bfloat16)
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in ("Question: 2 + 9 = ?\nAnswer: ", "5 + 5 =")]
    groups = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=6, seed=2))
    assert model.training
    completions = [c for g in groups for c in g]
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trainer = score(model, [torch.tensor(p) for p, g in zip(prompts, groups) for _ in g],
                        [c.token_ids for c in completions], tok.pad_token_id, 1.0, layout="padded")
    model.train()
    # bf16 rounding differs between the cached and the full forward: a loose bound.
    torch.testing.assert_close(torch.cat(trainer), torch.cat([c.logprobs for c in completions]), atol=0.1, rtol=0)


def test_engines_register_when_the_package_is_imported_and_vllm_loads_only_when_built():
    import importlib.util
    import sys

    from replaygrpo.config import EngineConfig
    from replaygrpo.rollout import ENGINES, build_engine

    assert ENGINES.names() == ["hf", "vllm"]
    assert ENGINES.get("vllm").tensor_parallel and not ENGINES.get("hf").tensor_parallel
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: tests/test_vllm.py builds it")
    assert "vllm" not in sys.modules
    with pytest.raises(ImportError, match="make_vllm_venv.sh"):
        build_engine("vllm", torch.nn.Linear(2, 2), EngineConfig(), eos_token_id=0, pad_token_id=0)
