"""Typed records passed between the engine, the grader, the buffer and the loss.

Shapes use P = prompt length, C = completion length. Token ids are int32 and
log-probs float32 so a replay buffer of many rollouts stays compact.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    """Completions per prompt (the group size G during training)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int | None = None
    """Seed for this call's sampling; None draws from the engine's own generator."""


@dataclass
class Completion:
    """One sampled continuation, as an engine returns it."""

    token_ids: torch.Tensor  # (C,) int32, ends with the stop token when finish_reason == "stop"
    logprobs: torch.Tensor  # (C,) float32, behaviour log-prob of each sampled token
    finish_reason: str  # "stop" (end-of-text sampled) or "length" (max_new_tokens reached)


@dataclass
class Rollout:
    """One completion with everything the update needs: the unit the replay buffer stores."""

    prompt_ids: torch.Tensor  # (P,) int32
    completion_ids: torch.Tensor  # (C,) int32
    old_logprobs: torch.Tensor  # (C,) float32, log-probs under the weights that generated it
    reward: float
    advantage: float
    birth_step: int  # training step at which it was generated
    prompt_id: int  # index of the problem in the training set
    group_id: int  # unique id of the G completions drawn for one prompt at one step
    reuse: int = 0  # times it has been trained on as a replayed rollout
    behaviour_logprobs: torch.Tensor | None = None
    # (C,) float32, the engine's log-probs of the sampled tokens, kept beside a trainer pi_old
    # for truncated importance sampling (loss.tis_cap); None when not kept (TIS off: free)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_ids.numel())


@dataclass
class UpdateBatch:
    """The rollouts of one optimiser step: this step's fresh ones first, then the replayed ones."""

    rollouts: list[Rollout]
    num_fresh: int  # rollouts[:num_fresh] were generated at this step (pi_old = the update's own forward)

    @property
    def fresh(self) -> list[Rollout]:
        return self.rollouts[:self.num_fresh]

    @property
    def replayed(self) -> list[Rollout]:
        return self.rollouts[self.num_fresh:]
