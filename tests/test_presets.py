"""The paper-grid presets conf/experiment/paper_<size>_<method>.yaml: compose, validate, share one recipe.

Compose only (no model, no data), so this runs in seconds. The recipe and every
assumption behind these values: docs/reproduction.md.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from replaygrpo.cli import CONF_DIR
from replaygrpo.config import Config, register_configs
from replaygrpo.methods import METHODS as METHOD_REGISTRY
from replaygrpo.variants import load_config as to_config

SIZES = {"0.6b": "Qwen/Qwen3-0.6B-Base", "1.7b": "Qwen/Qwen3-1.7B-Base", "4b": "Qwen/Qwen3-4B-Base"}
METHODS = ("grpo", "naive_replay", "replay")
PRESETS = [(size, method) for size in SIZES for method in METHODS]
EXPERIMENT_DIR = Path(CONF_DIR) / "experiment"


def composed(*overrides: str) -> Config:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def test_the_grid_is_exactly_nine_presets():
    found = {p.stem for p in EXPERIMENT_DIR.glob("paper_*_*.yaml")} - {"paper_common"}
    assert found == {f"paper_{s}_{m}" for s, m in PRESETS}


@pytest.mark.parametrize("size,method", PRESETS)
def test_preset_composes_with_the_shared_recipe(size: str, method: str):
    cfg = composed(f"experiment=paper_{size}_{method}")
    assert cfg.model.name_or_path == SIZES[size]
    assert cfg.model.dtype == "bfloat16" and cfg.model.gradient_checkpointing
    assert cfg.method.name == method
    # The GRPO recipe shared by all nine runs.
    assert cfg.trainer.group_size == 8
    assert cfg.trainer.lr == {"0.6b": 2.5e-6, "1.7b": 1.25e-6, "4b": 1e-6}[size]  # 1e-6 x 2560 / width
    assert cfg.trainer.prompts_per_step == 128
    assert cfg.trainer.steps == 500
    # Accuracy during training on the same fixed MATH500 subset for every run, greedy.
    assert (cfg.trainer.eval_every, cfg.trainer.eval_benchmark, cfg.trainer.eval_size) == (50, "math500", 250)
    assert cfg.trainer.eval_max_new_tokens == cfg.engine.max_new_tokens
    assert cfg.engine.name == "vllm"
    assert cfg.engine.temperature == 1.0 and cfg.engine.top_p == 1.0
    assert cfg.engine.max_new_tokens == 7168
    assert cfg.loss.agg == "token_mean"
    assert cfg.loss.kl_coef == 0
    assert (cfg.loss.clip_low, cfg.loss.clip_high) == (0.2, 0.28)
    assert cfg.loss.adv_scale == "std"
    assert cfg.data.name == "dapo_math" and cfg.data.template == "qwen_math" and cfg.data.path is None
    # Evaluation after training: five benchmarks, avg@4 at T=0.6, top-p 0.95, the Qwen math prompt.
    assert cfg.eval_after_train
    assert cfg.eval.benchmarks == ["math500", "aime24", "amc23", "minerva_math", "olympiadbench"]
    assert (cfg.eval.k, cfg.eval.temperature, cfg.eval.top_p) == (4, 0.6, 0.95)
    assert cfg.eval.max_new_tokens == 8192 and cfg.eval.template == "qwen_math"
    assert cfg.checkpoint.every == 50


@pytest.mark.parametrize("size", SIZES)
def test_methods_differ_only_in_the_buffer(size: str):
    grpo, naive, replay = (composed(f"experiment=paper_{size}_{m}") for m in METHODS)
    for other in (naive, replay):
        assert (other.trainer, other.loss, other.engine, other.data, other.eval, other.model) == \
            (grpo.trainer, grpo.loss, grpo.engine, grpo.data, grpo.eval, grpo.model)
    r = replay.replay
    assert (r.unit, r.tau_max, r.alpha, r.replay_ratio, r.anchor, r.max_reuse) == ("rollout", 2, 1.0, 1.0, True, None)
    n = naive.replay  # the naive method reads these three keys only; it has no age bound
    assert (n.replay_ratio, n.anchor) == (1.0, True)
    assert n.capacity == 4 * grpo.trainer.prompts_per_step * grpo.trainer.group_size
    assert METHOD_REGISTRY.get("naive_replay").build(n).age_bound is None


def test_micro_batch_shrinks_with_model_size():
    budgets = [composed(f"experiment=paper_{s}_grpo").trainer.micro_batch_tokens for s in SIZES]
    assert budgets == sorted(budgets, reverse=True)
    # At least one full sequence (longest prompt + response) fits a micro-batch.
    cfg = composed("experiment=paper_4b_grpo")
    assert min(budgets) >= cfg.data.max_prompt_tokens + cfg.engine.max_new_tokens


@pytest.mark.parametrize("size,method", PRESETS)
def test_reproduce_script_reads_the_steps(size: str, method: str):
    # scripts/reproduce_paper.sh reads `trainer: steps:` from the preset file itself for its estimate.
    text = (EXPERIMENT_DIR / f"paper_{size}_{method}.yaml").read_text()
    assert re.search(r"^trainer:\n(?:  .*\n)*?  steps: 500\b", text, re.M)


def test_command_line_overrides_win_over_a_preset():
    cfg = composed("experiment=paper_4b_replay", "engine=hf", "engine.batch_size=64", "replay.tau_max=4",
                   "data.path=../shared/data/train/dapo_math_14k/train.jsonl")
    assert cfg.engine.name == "hf" and cfg.engine.batch_size == 64 and cfg.engine.max_new_tokens == 7168
    assert cfg.replay.tau_max == 4 and cfg.data.path.endswith("train.jsonl")
