"""The registered variants a config selects, looked up once, before anything is loaded.

`config` is the bottom of the import graph and cannot see the registries (they live with
their variants, above it), so every key whose value names a registered variant is checked
here, where it is looked up, with a ConfigError naming the key: `method.name`
(`methods.METHODS`), `engine.name` and `eval.engine` (`rollout.ENGINES`), `loss.agg`
(`grpo.LOSS_AGGS`), `loss.adv_scale` (`grpo.ADVANTAGE_SCALES`), the prompt templates
(`data.prompts.TEMPLATES`) and the toy levels (`data.toy.LEVELS`). The CLI runs
`load_config` (= `validation.to_config` + `resolve`) wherever it composes a config.
"""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from replaygrpo.config import Config, ConfigError
from replaygrpo.data.prompts import TEMPLATES
from replaygrpo.data.toy import LEVELS
from replaygrpo.grpo import ADVANTAGE_SCALES, LOSS_AGGS, Aggregation
from replaygrpo.methods import METHODS, Method
from replaygrpo.rollout import ENGINES
from replaygrpo.rollout.engine import EngineEntry
from replaygrpo.validation import to_config


@dataclass(frozen=True)
class Variants:
    method: Method
    engine: EngineEntry
    agg: Aggregation


def resolve(cfg: Config) -> Variants:
    """Look up every registered variant `cfg` names; raise ConfigError naming the first bad key."""
    method = METHODS.get(cfg.method.name)
    engine = ENGINES.get(cfg.engine.name)
    if cfg.eval.engine not in ENGINES:
        raise ConfigError(f"config key `eval.engine` has the bad value {cfg.eval.engine!r}; valid: {ENGINES.names()}.")
    agg = LOSS_AGGS.get(cfg.loss.agg)
    ADVANTAGE_SCALES.get(cfg.loss.adv_scale)
    tp = cfg.engine.tensor_parallel_size
    if tp > 1 and not engine.tensor_parallel:
        raise ConfigError(f"config key `engine.tensor_parallel_size` has the bad value {tp!r}; allowed: 1 with "
                          f"engine={cfg.engine.name} (tensor parallel engines: "
                          f"{', '.join(n for n in ENGINES if ENGINES.get(n).tensor_parallel)}).")
    for key, value in (("data.template", cfg.data.template), ("eval.template", cfg.eval.template)):
        if value not in TEMPLATES:
            raise ConfigError(f"config key `{key}` has the bad value {value!r}; allowed: one of {', '.join(TEMPLATES)}.")
    for level in cfg.data.levels:
        if level not in LEVELS:
            raise ConfigError(f"config key `data.levels` has the bad value {list(cfg.data.levels)!r}; "
                              f"allowed: levels from {sorted(LEVELS)}.")
    return Variants(method, engine, agg)


def load_config(cfg: DictConfig | Config) -> Config:
    """`validation.to_config` (schema, ranges, cross-field rules), then `resolve`: the whole check."""
    out = to_config(cfg)
    resolve(out)
    return out
