"""The memory plan: parameter counts exact, the update's figures near measured CPU peaks, presets planned and refused.

The measurement runs one update step in a fresh process (glibc's mmap threshold pinned, so
freed tensors leave the resident set) and takes the resident high-water mark over the
step's start (VmHWM reset through /proc/self/clear_refs); the plan's update transient
(gradients + activations + logits chunk) must be within a stated factor of it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from replaygrpo.cli import CONF_DIR
from replaygrpo.memplan import KNOWN, PlanError, Shape, check, make_plan, model_shape

REPO = Path(__file__).resolve().parents[1]
PRESETS = [p.stem for p in (REPO / "conf" / "experiment").glob("paper_*_*.yaml") if p.stem != "paper_common"]


def compose(*overrides: str, world: int = 1):
    from unittest.mock import patch

    from hydra import compose as hydra_compose, initialize_config_dir

    from replaygrpo.validation import to_config

    with patch.dict(os.environ, {"WORLD_SIZE": str(world)}), initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return to_config(hydra_compose(config_name="config", overrides=list(overrides)))


def test_parameter_counts_are_exact():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from replaygrpo.toymodel import build_model, build_tokenizer

    cfg = compose()
    toy = build_model(cfg, vocab_size=len(build_tokenizer()), eos_id=0)
    assert model_shape(cfg).params == sum(p.numel() for p in toy.parameters())
    # An untied head and an explicit head_dim, as in the hub configs.
    c = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)
    shape = Shape(64, 2, 4, 2, 32, 96, 300, tied=False)
    assert shape.params == sum(p.numel() for p in Qwen3ForCausalLM(c).parameters())
    assert KNOWN["Qwen/Qwen3-4B-Base"].params == pytest.approx(4.02e9, rel=0.01)  # the model card's 4.0B
    assert KNOWN["Qwen/Qwen3-1.7B-Base"].params == pytest.approx(1.72e9, rel=0.01)


def test_a_local_config_json_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "vocab_size": 300, "tie_word_embeddings": True}))
    assert model_shape(compose(f"model.name_or_path={tmp_path}")) == Shape(64, 2, 4, 2, 16, 96, 300, True)
    with pytest.raises(PlanError, match="model.name_or_path"):
        model_shape(compose("model.name_or_path=someone/unknown-model"))


CASES = {  # (hidden, layers, intermediate, vocab, rows, completion tokens, dtype, grad ckpt): plan / measured
    "toy_float32": ([128, 3, 256, 104, 32, 56, "float32", 0], (0.8, 1.5)),
    "larger_bf16": ([384, 6, 1024, 8000, 16, 120, "bfloat16", 0], (0.8, 1.5)),
    # Checkpointed: the plan counts a whole recomputed layer and the full logits chunk; it
    # comes out about 2x the measured peak (on the safe side).
    "larger_bf16_ckpt": ([256, 4, 768, 2000, 32, 56, "bfloat16", 1], (0.8, 2.5)),
}


@pytest.mark.parametrize("name", CASES)
def test_update_figures_are_near_the_measured_cpu_peak(name):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc (VmHWM reset)")
    args, (lo, hi) = CASES[name]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, __file__, json.dumps(args)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert lo <= r["ratio"] <= hi, r


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_is_planned_on_80_and_141_gb(preset):
    world = 2 if "4b" in preset else 1  # the 4B presets run under torchrun on two GPUs
    cfg = compose(f"experiment={preset}", world=world)
    for gb in (80, 141):
        plan = make_plan(cfg, world, gb)
        assert plan.fits, (preset, gb, plan.render())
        assert set(plan.phases) == {"step", "generate", "update", "sync"}


def test_a_configuration_that_cannot_fit_is_refused_naming_the_key():
    cfg = compose("experiment=paper_4b_replay")
    plan = make_plan(cfg, 1, 80)  # 4B on one 80 GB card: the step's weights, gradients and AdamW states are over
    assert not plan.fits and "optimiser step" in plan.fix and "nproc_per_node" in plan.fix
    offloaded = make_plan(compose("experiment=paper_4b_replay", "fsdp.offload_optimizer=true"), 1, 80)
    assert offloaded.total("generate") < plan.total("generate") - 30e9 and not offloaded.fits  # the step still is
    assert make_plan(cfg, 1, 141).fits
    greedy = make_plan(compose("experiment=paper_1.7b_replay", "engine.gpu_memory_utilization=0.8"), 1, 80)
    # 80 GB x 0.9 usable - 20.6 GB of float32 weights and AdamW states = 51.4 GB = 0.64 of the card
    assert "lower engine.gpu_memory_utilization (at most 0.64 fits" in greedy.fix
    assert "trainer.micro_batch_tokens" in make_plan(compose("experiment=paper_1.7b_replay",
                                                             "trainer.micro_batch_tokens=400000"), 1, 80).fix
    assert "gradient_checkpointing" in make_plan(compose("experiment=paper_1.7b_replay",
                                                         "model.gradient_checkpointing=false"), 1, 80).fix
    assert "nproc_per_node" in make_plan(cfg, 1, 40).fix
    check(cfg, "cpu", 1)  # on CPU the plan is only logged
    with pytest.raises(PlanError, match="nproc_per_node"):
        check(cfg, "cuda", 1)


def test_train_on_cuda_refuses_before_loading_anything(tmp_path):
    from replaygrpo.train import train

    cfg = compose("experiment=paper_4b_replay", "device=cuda", "data.path=/nonexistent/train.jsonl")
    with pytest.raises(PlanError, match="plan.gpu_memory_gb=80"):  # not a DataError: nothing was read
        train(cfg, tmp_path)


def test_plan_command_prints_the_budget_and_exits_2_when_it_cannot_fit():
    from typer.testing import CliRunner

    from replaygrpo.cli import app

    out = CliRunner().invoke(app, ["plan", "experiment=paper_4b_replay", "--world-size", "2"])
    assert out.exit_code == 0 and "verdict: fits" in out.output and "2 rank(s)" in out.output, out.output
    for phase in ("generate", "update", "sync", "optimiser", "activations", "logits chunk", "KV cache"):
        assert phase in out.output
    out = CliRunner().invoke(app, ["plan", "experiment=paper_4b_replay"])
    assert out.exit_code == 2 and "error: does not fit" in out.output and "nproc_per_node" in out.output


def _measure(h: int, L: int, I: int, V: int, rows: int, comp: int, dtype: str, ckpt: int) -> None:
    """Run in a fresh process: one update step's resident peak over its start, and the plan's figure."""
    import gc

    from transformers import Qwen3Config, Qwen3ForCausalLM

    from replaygrpo.memplan import activation_bytes, logits_bytes
    from replaygrpo.records import Rollout, UpdateBatch
    from replaygrpo.update import UpdateOptions, update_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = Shape(h, L, 4, 2, h // 4, I, V, True)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=V, hidden_size=h, intermediate_size=I, num_hidden_layers=L,
        num_attention_heads=4, num_key_value_heads=2, head_dim=h // 4, tie_word_embeddings=True, max_position_embeddings=4096))
    assert sum(p.numel() for p in model.parameters()) == shape.params
    if ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(1)
    batch = [Rollout(prompt_ids=torch.randint(1, V, (8,), generator=g, dtype=torch.int32),
                     completion_ids=torch.randint(1, V, (comp,), generator=g, dtype=torch.int32),
                     old_logprobs=torch.full((comp,), -5.0), reward=1.0, advantage=1.0 if i % 2 else -1.0,
                     birth_step=0, prompt_id=i, group_id=i) for i in range(rows)]
    tokens = rows * (8 + comp)

    def step():
        opts = UpdateOptions(pad_id=0, token_budget=tokens, layout="padded",
                             autocast_dtype=torch.bfloat16 if dtype == "bfloat16" else None)
        update_step(model, opt, UpdateBatch(batch, num_fresh=rows), opts)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    step()  # AdamW's states exist from here on; gradients are None between steps
    gc.collect()
    base = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
    step()
    measured = status("VmHWM:") - base
    d = 2 if dtype == "bfloat16" else 4
    planned = 4 * shape.params + activation_bytes(shape, tokens, d, bool(ckpt)) + logits_bytes(shape, tokens)
    print(json.dumps({"tokens": tokens, "measured": measured, "planned": planned, "ratio": planned / measured}))


if __name__ == "__main__":
    _measure(*json.loads(sys.argv[1]))
