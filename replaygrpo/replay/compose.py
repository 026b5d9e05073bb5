"""Fresh-anchored batch composition (DESIGN step 6) and its ablation.

anchor=True (the paper): the update batch is ALL fresh rollouts of the step plus
R = num_replay(len(fresh), replay_ratio) replayed ones; replay never displaces fresh.
anchor=False (ablation): the batch keeps len(fresh) rollouts, R of them replayed,
so replay displaces a random subset of the fresh rollouts.

R rounds half up (2.5 -> 3), not Python's round-half-to-even, so the replay count is
monotone in the ratio; use `num_replay` wherever R is needed.
"""
from __future__ import annotations

import math

import torch

from replaygrpo.replay.buffer import BaseReplayBuffer
from replaygrpo.records import Rollout


def num_replay(n_fresh: int, replay_ratio: float) -> int:
    """R = round(replay_ratio * n_fresh), rounding halves up."""
    if replay_ratio < 0:
        raise ValueError(f"replay_ratio must be >= 0, got {replay_ratio}")
    return int(math.floor(replay_ratio * n_fresh + 0.5))


def compose_batch(
    fresh: list[Rollout],
    buffer: BaseReplayBuffer,
    step: int,
    replay_ratio: float,
    anchor: bool,
    generator: torch.Generator,
) -> tuple[list[Rollout], list[Rollout]]:
    """(fresh rollouts used, replayed rollouts) for the update at `step`.

    Fewer than R are replayed when the buffer has fewer eligible; with anchor=False
    the batch is then topped up with fresh ones, so its size is always len(fresh).
    Call it before adding this step's rollouts or after: sample only draws rollouts
    born before `step`.
    """
    r = num_replay(len(fresh), replay_ratio)
    if not anchor:
        r = min(r, len(fresh))
    replayed = buffer.sample(r, step, generator)
    if anchor:
        return list(fresh), replayed
    keep = len(fresh) - len(replayed)
    # Which fresh rollouts make room is random, but their order is kept.
    idx = torch.randperm(len(fresh), generator=generator)[:keep].sort().values
    return [fresh[i] for i in idx.tolist()], replayed
