"""Checks on a composed Config: value ranges and cross-field rules, with an error naming the key.

Hydra already rejects unknown keys and ill-typed values; `validate` checks what a type cannot
say (ranges, choices, rules that tie keys together) and raises ConfigError with the key, the
bad value and what is allowed. `to_config` turns Hydra's DictConfig into the dataclasses of
replaygrpo.config once, at the boundary, and validates them. Keys that name a registered
variant are checked where they are looked up (`replaygrpo.variants.resolve`).
"""
from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from replaygrpo.config import READ_ONLY_WHEN, Config
from replaygrpo.registry import ConfigError

__all__ = ["CHOICES", "to_config", "validate"]


CHOICES: dict[str, tuple[str, ...]] = {
    "model.dtype": ("float32", "bfloat16"),
    "data.name": ("toy", "math_train", "dapo_math"),
    "engine.sync": ("inplace", "reload"),
    "loss.old_logprobs": ("trainer", "engine"),
    "replay.unit": ("rollout", "group"),
    "trainer.update_layout": ("auto", "shared_prefix", "packed", "padded"),
    "device": ("auto", "cpu", "cuda"),
}


def _get(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config key `{key}` has the bad value {value!r}; allowed: {allowed}.")


def validate(cfg: Config) -> Config:
    """Check ranges and cross-field rules; raise ConfigError naming the first bad key."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        _require(value in allowed, key, value, "one of " + ", ".join(allowed))
    t, lo = cfg.trainer, cfg.loss
    for key in ("trainer.steps", "trainer.prompts_per_step", "trainer.micro_batch_tokens",
                "trainer.eval_size", "trainer.max_bad_steps", "data.max_prompt_tokens",
                "engine.max_new_tokens", "engine.batch_size", "eval.k",
                "eval.max_new_tokens", "eval.batch_size", "model.warmstart_batch_size"):
        _require(_get(cfg, key) >= 1, key, _get(cfg, key), "an integer >= 1")
    for key in ("trainer.eval_every", "trainer.warmup_steps", "checkpoint.every",
                "model.warmstart_steps", "eval.grader_workers", "trainer.grader_workers"):
        _require(_get(cfg, key) >= 0, key, _get(cfg, key), "an integer >= 0")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    _require(t.group_size >= 2 or lo.adv_scale == "none", "trainer.group_size", t.group_size,
             "an integer >= 2 (a group of 1 has no std; use loss.adv_scale=none for G=1)")
    _require(t.group_size >= 1, "trainer.group_size", t.group_size, "an integer >= 1")
    _require(1 <= t.mini_batches <= t.prompts_per_step * t.group_size // world, "trainer.mini_batches",
             t.mini_batches, f"an integer in [1, {t.prompts_per_step * t.group_size // world}] (at most the "
             "fresh rollouts per process, trainer.prompts_per_step x trainer.group_size / WORLD_SIZE)")
    _require(t.prompts_per_step % world == 0, "trainer.prompts_per_step", t.prompts_per_step,
             f"a multiple of the number of processes ({world}, torchrun's WORLD_SIZE): each rank takes an equal share")
    tp = cfg.engine.tensor_parallel_size
    _require(tp >= 1, "engine.tensor_parallel_size", tp, "an integer >= 1")
    _require(tp == 1 or world % tp == 0 and world > 1, "engine.tensor_parallel_size", tp,
             f"a divisor of the number of torchrun processes ({world}, WORLD_SIZE): the engine's "
             "tensor-parallel ranks are the trainer's ranks (launch with torchrun --nproc_per_node "
             f"{tp} or a multiple)")
    _require(t.lr > 0, "trainer.lr", t.lr, "a float > 0")
    _require(not (t.update_layout == "shared_prefix" and cfg.model.gradient_checkpointing), "trainer.update_layout",
             t.update_layout, "auto, packed or padded with model.gradient_checkpointing=true (it drops the KV cache "
             "the shared prefix is built on)")
    _require(world == 1 or t.update_layout != "shared_prefix", "trainer.update_layout", t.update_layout,
             "auto, packed or padded under torchrun (every rank must run the same forwards per micro-batch)")
    _require(t.grad_clip >= 0, "trainer.grad_clip", t.grad_clip, "a float >= 0 (0 = off)")
    _require(0 <= lo.clip_low < 1, "loss.clip_low", lo.clip_low, "a float in [0, 1)")
    _require(lo.clip_high >= 0, "loss.clip_high", lo.clip_high, "a float >= 0")
    _require(lo.kl_coef >= 0, "loss.kl_coef", lo.kl_coef, "a float >= 0")
    _require(lo.tis_cap is None or lo.tis_cap >= 1, "loss.tis_cap", lo.tis_cap, "null or a float >= 1")
    # With engine pi_old the behaviour log-probs are pi_old itself: the weight would be 1 always.
    _require(lo.tis_cap is None or lo.old_logprobs == "trainer", "loss.tis_cap", lo.tis_cap,
             "null with loss.old_logprobs=engine (pi_old is then the engine's own log-probs, so the TIS "
             "weight exp(pi_old - behaviour) is always 1); set loss.old_logprobs=trainer to correct "
             "engine/trainer mismatch")
    r = cfg.replay
    _require(r.tau_max is None or r.tau_max >= 0, "replay.tau_max", r.tau_max, "null or an integer >= 0")
    _require(r.replay_ratio >= 0, "replay.replay_ratio", r.replay_ratio, "a float >= 0")
    _require(r.anchor or r.replay_ratio <= 1, "replay.replay_ratio", r.replay_ratio,
             "a float in [0, 1] when replay.anchor=false (replay cannot displace more than the batch)")
    _require(r.alpha >= 0, "replay.alpha", r.alpha, "a float >= 0")
    _require(r.floor >= 0, "replay.floor", r.floor, "a float >= 0")
    _require(r.max_reuse is None or r.max_reuse >= 1, "replay.max_reuse", r.max_reuse, "null or an integer >= 1")
    _require(r.capacity >= 1, "replay.capacity", r.capacity, "an integer >= 1")
    e = cfg.engine
    _require(e.temperature > 0, "engine.temperature", e.temperature, "a float > 0 (training samples)")
    _require(0 < e.top_p <= 1, "engine.top_p", e.top_p, "a float in (0, 1]")
    _require(e.max_logprob_gap >= 0, "engine.max_logprob_gap", e.max_logprob_gap, "a float >= 0")
    _require(e.min_sync_tracking >= 0, "engine.min_sync_tracking", e.min_sync_tracking, "a float >= 0")
    _require(e.tracking_min_shift is None or e.tracking_min_shift >= 0, "engine.tracking_min_shift",
             e.tracking_min_shift, "null or a float >= 0")
    _require(0 < e.gpu_memory_utilization < 1, "engine.gpu_memory_utilization",
             e.gpu_memory_utilization, "a float in (0, 1)")
    _require(cfg.eval.temperature >= 0, "eval.temperature", cfg.eval.temperature, "a float >= 0")
    _require(0 < cfg.eval.top_p <= 1, "eval.top_p", cfg.eval.top_p, "a float in (0, 1]")
    _require(cfg.eval.limit is None or cfg.eval.limit >= 1, "eval.limit", cfg.eval.limit, "null or an integer >= 1")
    _require(cfg.eval.grade_timeout > 0, "eval.grade_timeout", cfg.eval.grade_timeout, "a float > 0")
    _require(0 < cfg.eval.gpu_memory_utilization < 1, "eval.gpu_memory_utilization",
             cfg.eval.gpu_memory_utilization, "a float in (0, 1)")
    for name, n in cfg.eval.k_per_benchmark.items():
        _require(name in cfg.eval.benchmarks, "eval.k_per_benchmark", name, "a benchmark of eval.benchmarks")
        _require(n >= 1, f"eval.k_per_benchmark.{name}", n, "an integer >= 1")
    most = max([cfg.eval.k, *cfg.eval.k_per_benchmark.values()])
    for pk in cfg.eval.pass_k:
        _require(1 <= pk <= most, "eval.pass_k", list(cfg.eval.pass_k),
                 f"integers in [1, {most}] (the most samples any benchmark gets)")
    _require(cfg.plan.gpu_memory_gb > 0, "plan.gpu_memory_gb", cfg.plan.gpu_memory_gb, "a float > 0")
    _require(not cfg.fsdp.mixed_precision or cfg.model.dtype == "bfloat16", "fsdp.mixed_precision",
             cfg.fsdp.mixed_precision, "false with model.dtype=float32 (the policy computes in bfloat16)")
    _require(cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "an integer >= 1")
    _require(cfg.resume in (None, "auto") or isinstance(cfg.resume, str), "resume", cfg.resume,
             "auto, a checkpoint path, or null")
    if cfg.data.name == "toy":
        _require(cfg.data.num_train >= t.prompts_per_step, "data.num_train", cfg.data.num_train,
                 "at least trainer.prompts_per_step")
    default = Config()
    for key, settings in READ_ONLY_WHEN.items():
        if any(str(_get(cfg, k)) == v for k, v in (c.split("=", 1) for c in settings)):
            continue
        value, unset = _get(cfg, key), _get(default, key)
        _require(value == unset, key, value, f"{unset!r} (its default) unless {' or '.join(settings)}, "
                 "the only settings that read it")
    _require(cfg.model.hidden_size % cfg.model.num_heads == 0, "model.hidden_size", cfg.model.hidden_size,
             "a multiple of model.num_heads")
    _require(cfg.model.num_heads % cfg.model.num_kv_heads == 0, "model.num_kv_heads",
             cfg.model.num_kv_heads, "a divisor of model.num_heads")
    return cfg


def to_config(cfg: DictConfig | Config) -> Config:
    """Turn the composed DictConfig into real dataclasses (once, at the boundary) and validate."""
    if isinstance(cfg, Config):
        return validate(cfg)
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, Config):  # composed without the schema (e.g. a stale config file)
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg))
    return validate(obj)  # type: ignore[arg-type]
