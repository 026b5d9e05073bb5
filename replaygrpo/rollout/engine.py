"""The generation engine interface and its registry.

An engine turns prompt token ids into G completions each, with the behaviour log-prob
of every sampled token, and receives new weights after each optimiser step. Each engine
module registers an `EngineEntry` here (`@register_engine`); `replaygrpo.rollout` imports
the engine modules, so importing the package fills the registry. This module imports none
of them: the arrows run engine module -> registry only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from replaygrpo.config import EngineConfig
from replaygrpo.records import Completion, SamplingParams
from replaygrpo.registry import Registry


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, params.n completions (token ids, sampled-token log-probs, finish reason)."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights (and wake it if asleep)."""
        ...

    def sleep(self) -> None:
        """Free the engine's accelerator memory for the update (no-op where it shares the model)."""
        ...

    def metrics(self) -> dict[str, float]:
        """Per-step engine metrics, e.g. sync/logprob_gap."""
        ...

    def close(self) -> None:
        """Release the engine (under torchrun: after the last collective of the run)."""
        ...


@dataclass(frozen=True)
class EngineSetup:
    """What any engine is built from besides its `EngineConfig`: plain values, no Config."""

    eos_token_id: int
    pad_token_id: int
    stop_token_ids: list[int] = field(default_factory=list)
    """Every token that ends a completion (the end-of-text token is always one)."""
    autocast_dtype: torch.dtype | None = None
    """Compute dtype under autocast (bf16 over float32 master weights), None = the weights' own."""
    seed: int = 0
    """The run's seed (engines that seed their own sampler)."""
    dtype: str | None = None
    """The model's dtype name (engines that hold their own copy of the weights); None = the model's."""
    tokenizer: Any = None
    """Optional: engines that need one save it beside their weights."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Engine-specific keywords (e.g. a vLLM work directory in tests)."""


EngineFactory = Callable[[torch.nn.Module, EngineConfig, EngineSetup], Engine]


@dataclass(frozen=True)
class EngineEntry:
    """A registered engine: how to build it, and what the config checks ask of it."""

    build: EngineFactory
    tensor_parallel: bool = False
    """Whether it can shard one engine over several ranks (engine.tensor_parallel_size > 1)."""


ENGINES: Registry[EngineEntry] = Registry("engine.name")


def register_engine(name: str, tensor_parallel: bool = False) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator registering an engine factory `(model, settings, setup) -> Engine` under `name`."""

    def wrap(factory: EngineFactory) -> EngineFactory:
        ENGINES.add(name, EngineEntry(factory, tensor_parallel))
        return factory

    return wrap


def build_engine(name: str, model: torch.nn.Module, settings: EngineConfig | None = None, *,
                 eos_token_id: int, pad_token_id: int, batch_size: int | None = None,
                 cfg: Any = None, **setup: Any) -> Engine:
    """The engine registered as `name`, built from `settings` (defaults: EngineConfig()).

    `batch_size` overrides settings.batch_size (eval's own batch). `cfg` (a whole Config)
    is accepted from callers that still pass one and is read here, once: the engine itself
    gets `cfg.engine`, the seed and the model dtype.
    """
    if cfg is not None:
        settings = settings or cfg.engine
        setup.setdefault("seed", cfg.seed)
        setup.setdefault("dtype", cfg.model.dtype)
    settings = settings or EngineConfig()
    if batch_size is not None:
        settings = EngineConfig(**{**vars(settings), "batch_size": batch_size})
    known = set(EngineSetup.__dataclass_fields__)
    extra = {k: setup.pop(k) for k in list(setup) if k not in known}
    stop = setup.pop("stop_token_ids", None) or []
    spec = EngineSetup(eos_token_id, pad_token_id, list(stop), extra=extra, **setup)
    return ENGINES.get(name).build(model, settings, spec)
