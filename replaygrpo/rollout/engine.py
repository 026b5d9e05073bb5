"""The generation engine interface and its registry.

An engine turns prompt token ids into G completions each, with the behaviour log-prob
of every sampled token, and receives new weights after each optimiser step. The HF
engine runs anywhere; vLLM registers itself under the same interface when selected.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from replaygrpo.records import Completion, SamplingParams


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


ENGINES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str) -> Callable[[Callable[..., Engine]], Callable[..., Engine]]:
    def wrap(factory: Callable[..., Engine]) -> Callable[..., Engine]:
        ENGINES[name] = factory
        return factory

    return wrap


def build_engine(name: str, **kwargs: Any) -> Engine:
    if name == "vllm" and name not in ENGINES:
        import replaygrpo.rollout.vllm_engine  # noqa: F401  (imported only when selected)
    if name == "hf" and name not in ENGINES:
        import replaygrpo.rollout.hf  # noqa: F401
    try:
        return ENGINES[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: hf, vllm") from None
