"""Steps 1-4 of the method (DESIGN.md): generate, grade, group-relative advantages, rollouts.

Shared by the training loop and the benchmarks (scripts/bench_replay_cost.py), so both
measure the same work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from replaygrpo.grpo import group_advantages
from replaygrpo.records import Completion, Rollout, SamplingParams
from replaygrpo.rollout.engine import Engine


class Grader(Protocol):
    def grade_many(self, responses: list[str], golds: list[str]) -> list[bool]: ...


@dataclass
class StepRollouts:
    """One step's fresh rollouts (one per completion, in prompt order) and what they came from."""

    rollouts: list[Rollout]
    completions: list[Completion]
    rewards: torch.Tensor  # (N,) float32, N = prompts x G
    advantages: torch.Tensor  # (N,) float32
    generate_s: float  # wall time of step 1
    grade_s: float  # wall time of step 2


def make_rollouts(engine: Engine, grader: Grader, tokenizer: Any, prompts: list[list[int]], golds: list[str],
                  prompt_index: list[int], params: SamplingParams, *, step: int, first_group: int,
                  adv_scale: str) -> StepRollouts:
    """Sample `params.n` completions per prompt, reward each against its prompt's gold answer,
    normalise the rewards within each group, and make every completion one rollout.

    `prompt_index[k]` is prompt k's index in the training set; its group gets id
    `first_group + k`. Rollouts born at `step`.
    """
    t0 = time.perf_counter()
    # 1. G completions per prompt, with the behaviour log-prob of every sampled token.
    groups = engine.generate(prompts, params)
    t_gen = time.perf_counter()
    # 2. Reward: 1 if the extracted answer is equivalent to the gold, else 0.
    completions = [c for g in groups for c in g]
    texts = tokenizer.batch_decode([c.token_ids.tolist() for c in completions], skip_special_tokens=True)
    g = params.n
    rewards = torch.tensor(grader.grade_many(texts, [gold for gold in golds for _ in range(g)]),
                           dtype=torch.float32)
    t_grade = time.perf_counter()
    # 3. Group-relative advantages (a group's rollouts share one prompt, here on one rank).
    group_ids = torch.arange(len(prompts)).repeat_interleave(g) + first_group
    adv = group_advantages(rewards, group_ids, scale=adv_scale)
    # 4. Every completion becomes one rollout; a group's rollouts share one prompt tensor.
    prompt_tensors = [torch.tensor(p, dtype=torch.int32) for p in prompts]
    rollouts = [
        Rollout(prompt_ids=prompt_tensors[k // g], completion_ids=c.token_ids, old_logprobs=c.logprobs,
                reward=float(rewards[k]), advantage=float(adv[k]), birth_step=step,
                prompt_id=prompt_index[k // g], group_id=int(group_ids[k]),
                behaviour_logprobs=c.logprobs)  # the same tensor: free until pi_old replaces old_logprobs
        for k, c in enumerate(completions)]
    return StepRollouts(rollouts, completions, rewards, adv, t_gen - t0, t_grade - t_gen)
