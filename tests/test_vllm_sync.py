"""The vLLM engine's sync checks, memory hand-over and eval settings, on CPU without vLLM.

The probe, the tracking check and the wake-up order live in `replaygrpo.rollout.vllm_sync`
(no vLLM import); here a fake engine scores the probe with a copy of the model that a sync
refreshes or (stale) does not.
"""
from __future__ import annotations

import copy
import math
import subprocess
from pathlib import Path

import pytest
import torch

from replaygrpo.config import Config, EngineConfig
from replaygrpo.forward import score
from replaygrpo.rollout import vllm_sync
from replaygrpo.rollout.vllm_sync import PROBE_MAX_TOKENS, WeightSync, probe_batch, tracking
from replaygrpo.toymodel import build_model, build_tokenizer


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    tok = build_tokenizer()
    return build_model(Config(), len(tok), tok.eos_token_id).eval(), tok


class FakeSync(WeightSync):
    """An engine whose weights are a model copy that `_load_inplace` refreshes; its log-probs
    carry a fixed per-token offset, as an engine's numerics would."""

    def __init__(self, model, pad, probe, **cfg):
        self.cfg = EngineConfig(name="vllm", **cfg)
        self.engine_model = copy.deepcopy(model)
        self.dtype, self.pad, self.autocast_dtype = torch.float32, pad, None
        self.probe, self.vocab_size = probe, 0
        self.last_logprob_gap, self.syncs, self.asleep = None, 0, False
        self.llm = FakeLLM([])
        self.seen: list[list[list[int]]] = []

    def _load_inplace(self, model):
        self.engine_model.load_state_dict(model.state_dict())

    def engine_logprobs(self, seqs):
        self.seen.append(seqs)
        out = score(self.engine_model, [torch.tensor(s[:1]) for s in seqs], [torch.tensor(s[1:]) for s in seqs],
                    self.pad, layout="padded", chunk_size=64)
        g = torch.Generator().manual_seed(7)
        return [lp + 1e-3 * torch.randn(lp.shape, generator=g) for lp in out]


class FakeLLM:
    def __init__(self, calls):
        self.calls = calls

    def wake_up(self, tags):
        self.calls.append(f"wake_up:{tags[0]}")

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")


def _perturb(model, scale, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.abs().mean())


def test_probe_is_cut_and_scored_chunked(toy, monkeypatch):
    model, tok = toy
    long = [[i % 100 for i in range(5, 5 + 300)], list(range(9, 9 + 40))]
    probe = probe_batch([s[:20] for s in long] * 3, [s[20:] for s in long] * 3)
    assert len(probe) == vllm_sync.PROBE_SIZE and max(map(len, probe)) == PROBE_MAX_TOKENS == 256
    assert probe[1] == long[1]
    eng = FakeSync(model, tok.pad_token_id, [[i % 100 for i in range(3, 3 + 700)]] * 2, max_logprob_gap=math.inf)

    def unchunked(*_a, **_k):
        raise AssertionError("the probe took the unchunked full-vocabulary log-softmax")

    monkeypatch.setattr("replaygrpo.grpo.logprobs._naive_logprobs", unchunked)
    monkeypatch.setattr(vllm_sync, "PROBE_LOGITS_CHUNK", 32)  # several chunks even on the toy
    eng._check(model)
    assert eng.seen and all(len(s) == PROBE_MAX_TOKENS for s in eng.seen[-1])
    assert eng.last_logprob_gap < 1e-2


def test_tracking_slope():
    t0, e0 = torch.zeros(6), torch.full((6,), 0.3)
    t1 = torch.tensor([0.1, -0.2, 0.05, 0.0, 0.3, -0.1])
    assert tracking(e0, t0, e0 + t1, t1) == pytest.approx((1.0, float(t1.abs().mean())))
    assert tracking(e0, t0, e0, t1)[0] == 0.0  # stale engine
    assert tracking(e0, t0, e0 + 0.5 * t1, t1)[0] == pytest.approx(0.5)
    assert math.isnan(tracking(e0, t0, e0 + t1, t0)[0])  # the trainer did not move


def test_stale_engine_below_the_gap_threshold_is_flagged(toy, monkeypatch):
    model, tok = toy
    model = copy.deepcopy(model)
    probe = [tok(q, add_special_tokens=False)["input_ids"] + list(range(40, 60))
             for q in ("Question: 3 + 4 = ?\nAnswer: ", "12 + 345 + 6 = ?")]
    eng = FakeSync(model, tok.pad_token_id, probe)
    eng.sync_weights(model)  # the first sync: nothing to compare yet
    assert "sync/tracking" not in eng.metrics()
    _perturb(model, 1e-3)
    eng.sync_weights(model)
    m = eng.metrics()
    assert m["sync/tracking"] == pytest.approx(1.0, abs=0.05) and m["sync/probe_shift"] > 1e-4
    _perturb(model, 1e-3, seed=4)
    monkeypatch.setattr(eng, "_load_inplace", lambda model: None)  # the sync silently does nothing
    assert eng.logprob_gap(model) < eng.cfg.max_logprob_gap  # the gap check alone would pass
    with pytest.raises(RuntimeError, match=r"engine.sync=inplace.*engine.min_sync_tracking=0.5"):
        eng.sync_weights(model)
    monkeypatch.undo()
    eng.sync_weights(model)  # a real sync of the same weights passes
    assert eng.metrics()["sync/tracking"] == pytest.approx(1.0, abs=0.05)


def test_small_steps_add_up_until_a_stale_engine_shows(toy, monkeypatch):
    model, tok = toy
    model = copy.deepcopy(model)
    probe = [tok("Question: 3 + 4 = ?\nAnswer: ", add_special_tokens=False)["input_ids"] + list(range(40, 60))]
    eng = FakeSync(model, tok.pad_token_id, probe)
    eng.sync_weights(model)
    one = copy.deepcopy(model)
    _perturb(one, 1e-3)
    eng.sync_weights(one)
    step_shift = eng.metrics()["sync/probe_shift"]
    eng.sync_weights(model)  # back: the reference is the starting weights again
    # A noise floor above one step's shift: a single stale step is not judged, two (the same
    # direction twice) are, against the reference kept from before the first.
    monkeypatch.setattr(eng, "cfg", EngineConfig(name="vllm", tracking_min_shift=1.5 * step_shift))
    monkeypatch.setattr(eng, "_load_inplace", lambda model: None)
    eng.sync_weights(one)
    assert eng.metrics()["sync/tracking"] == pytest.approx(0.0, abs=1e-3)  # logged, not judged
    _perturb(one, 1e-3)
    with pytest.raises(RuntimeError, match="engine.min_sync_tracking"):
        eng.sync_weights(one)


def test_caches_go_back_before_the_engine_wakes(toy, monkeypatch):
    model, tok = toy
    calls: list[str] = []
    eng = FakeSync(model, tok.pad_token_id, None)
    eng.llm, eng.asleep = FakeLLM(calls), True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(eng, "_load_inplace", lambda model: calls.append("load"))
    monkeypatch.setattr(eng, "_check", lambda model: None)
    eng.sync_weights(model)
    assert calls == ["empty_cache", "wake_up:weights", "load", "empty_cache", "wake_up:kv_cache",
                     "reset_prefix_cache"]
    assert not eng.asleep


def test_eval_engine_has_no_sleep_mode_and_its_own_memory(toy, monkeypatch, tmp_path):
    from replaygrpo import evaluate, model as model_mod
    from replaygrpo.rollout import engine as engine_mod

    cfg = Config()
    cfg.engine.name, cfg.engine.sleep_mode, cfg.engine.gpu_memory_utilization = "vllm", True, 0.4
    cfg.engine.tensor_parallel_size = 2
    cfg.eval.engine, cfg.eval.gpu_memory_utilization, cfg.eval.grader_workers = "vllm", 0.85, 0
    built = {}

    class Closed:
        def close(self):
            built["closed"] = True

    def fake_build(name, **kw):
        built.update(kw, name=name)
        return Closed()

    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: (toy[0], toy[1]))
    monkeypatch.setattr(engine_mod, "build_engine", fake_build)
    evaluate._generate_all(cfg, tmp_path, {})
    s = built["settings"]
    assert built["name"] == "vllm" and built["closed"]
    assert (s.sleep_mode, s.gpu_memory_utilization, s.tensor_parallel_size) == (False, 0.85, 1)
    assert cfg.engine.sleep_mode and cfg.engine.gpu_memory_utilization == 0.4  # training's untouched


def test_vllm_kwargs_follow_the_settings():
    from replaygrpo.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine.__new__(VLLMEngine)  # the kwargs only: no vLLM, no model
    eng.cfg = EngineConfig(name="vllm", sleep_mode=False, gpu_memory_utilization=0.9)
    eng.dir, eng.dtype_name, eng.seed, eng.tokenizer, eng.on_cpu = Path("/m"), "bfloat16", 0, None, False
    eng.sleep_supported = False
    kw = eng.llm_kwargs()
    assert kw["enable_sleep_mode"] is False and kw["gpu_memory_utilization"] == 0.9


def test_eval_after_train_runs_in_its_own_process(monkeypatch, tmp_path):
    from replaygrpo import cli_after_train
    from replaygrpo.evaluate import EvalError

    seen = {}

    def fake_run(cmd, env):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, seen.get("code", 0))

    monkeypatch.setattr(cli_after_train.subprocess, "run", fake_run)
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "29500"), ("KEEP_ME", "1")):
        monkeypatch.setenv(k, v)
    run = tmp_path / "run, 1"
    cli_after_train.eval_after_train(run, str(run / "eval"), ["experiment=x", "model.name_or_path=Qwen/Qwen3-1.7B-Base",
                                                              "eval.limit=4", "+eval.out=/elsewhere"])
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "replaygrpo", "eval"]
    assert "experiment=x" in cmd and "eval.limit=4" in cmd
    assert f"model.name_or_path='{run}'" in cmd and f"eval.out='{run / 'eval'}'" in cmd
    assert not any("Qwen3" in c or "/elsewhere" in c for c in cmd)
    assert "RANK" not in seen["env"] and "WORLD_SIZE" not in seen["env"] and "MASTER_PORT" not in seen["env"]
    assert seen["env"]["KEEP_ME"] == "1"
    seen["code"] = 3
    with pytest.raises(EvalError, match="exited with 3"):
        cli_after_train.eval_after_train(run, str(run / "eval"), [])
