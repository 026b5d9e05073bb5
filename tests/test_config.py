"""Config composition and validation through Hydra's compose API."""
from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir

from replaygrpo.cli import CONF_DIR
from replaygrpo.config import Config, ConfigError
from replaygrpo.methods import METHODS
from replaygrpo.variants import load_config


def composed(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return load_config(compose(config_name="config", overrides=list(overrides)))


def test_default_is_the_toy_lab_with_grpo():
    cfg = composed()
    assert cfg.model.name_or_path == "toy-strong" and cfg.data.name == "toy"  # a shipped, checksummed base
    assert cfg.method.name == "grpo" and cfg.engine.name == "hf"


@pytest.mark.parametrize("method,age_bound,buffer", [("replay", 2, "ReplayBuffer"), ("naive_replay", None, "NaiveReplayBuffer"),
                                                     ("grpo", 0, "NoneType")])
def test_method_groups_pick_the_registered_method(method, age_bound, buffer):
    cfg = composed(f"method={method}")
    replay = METHODS.get(cfg.method.name).build(cfg.replay)
    assert cfg.method.name == method and replay.age_bound == age_bound
    assert type(replay.buffer).__name__ == buffer


@pytest.mark.parametrize("method", METHODS.names())
def test_method_files_set_only_the_keys_the_method_reads(method):
    from pathlib import Path

    from omegaconf import OmegaConf

    node = OmegaConf.load(Path(CONF_DIR) / "method" / f"{method}.yaml")
    assert set(node) <= {"method", "replay"} and dict(node.method) == {"name": method}
    assert set(node.get("replay", {})) <= set(METHODS.get(method).reads)


def test_qwen_models_and_overrides():
    cfg = composed("model=qwen3_4b", "replay.tau_max=4", "trainer.lr=1e-6")
    assert cfg.model.name_or_path == "Qwen/Qwen3-4B-Base" and cfg.model.dtype == "bfloat16"
    assert cfg.trainer.lr == 1e-6


@pytest.mark.parametrize("override,key", [
    ("replay.tau_max=-1", "replay.tau_max"),
    ("replay.replay_ratio=-0.5", "replay.replay_ratio"),
    ("loss.clip_low=1.5", "loss.clip_low"),
    ("trainer.group_size=1", "trainer.group_size"),
    ("loss.agg=sum", "loss.agg"),
    ("method.name=ppo", "method.name"),
    ("engine.top_p=0", "engine.top_p"),
    ("data.levels=[9]", "data.levels"),
    ("trainer.update_layout=flat", "trainer.update_layout"),
    ("trainer.update_layout=shared_prefix model.gradient_checkpointing=true", "trainer.update_layout"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        composed(*override.split())


def test_group_size_one_allowed_without_std():
    assert composed("trainer.group_size=1", "loss.adv_scale=none").trainer.group_size == 1


def test_unknown_and_ill_typed_keys_rejected():
    with pytest.raises(Exception, match="foo"):
        composed("trainer.foo=1")
    with pytest.raises(Exception, match="steps"):
        composed("trainer.steps=many")


@pytest.mark.parametrize("model", ["model=toy", "model=toy_weak", "model=qwen3_0.6b"])
@pytest.mark.parametrize("key", ["model.hidden_size=512", "model.warmstart_steps=0"])
def test_toy_recipe_keys_refused_for_a_model_that_ignores_them(model, key):
    """A shipped base or hub model has its own shape: a size or warm-start key would change nothing."""
    with pytest.raises(ConfigError, match=re.escape(key.split("=")[0]) + ".*name_or_path=toy"):
        composed(model, key)
    cfg = composed(model, "model.name_or_path=toy", key)  # the warm start built from them reads them
    assert cfg.model.name_or_path == "toy"


@pytest.mark.parametrize("key", ["data.levels=[2]", "data.num_train=50", "data.num_test=10"])
def test_toy_task_keys_refused_with_real_data(key):
    """The toy task's keys do nothing to MATH or DAPO prompts; levels and num_train also shape a `toy`
    warm start, which reads them whatever the data."""
    with pytest.raises(ConfigError, match=re.escape(key.split("=")[0]) + ".*data.name=toy"):
        composed("data=math_train", key)
    assert composed(key)  # the toy task reads all three
    if key != "data.num_test=10":
        assert composed("data=math_train", "model.name_or_path=toy", key)
    else:
        with pytest.raises(ConfigError, match=r"data\.num_test"):
            composed("data=math_train", "model.name_or_path=toy", key)
