"""The training methods: what each keeps between steps and how it composes the update batch.

A method is a registry entry (`METHODS`, chosen by `method.name`) whose `build` turns the
`replay.*` settings into a `Replay`: the object the loop asks to evict, compose the batch,
store the step's rollouts, report its size and age bound, and hand its buffer to the
checkpoint. `grpo` keeps nothing, so the loop has no special case for it. `reads` lists
the `replay.*` keys the method uses: its conf/method/<name>.yaml sets those and no other
(tests/test_presets.py checks it).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from replaygrpo.config import ReplayConfig
from replaygrpo.records import Rollout
from replaygrpo.registry import Registry
from replaygrpo.replay import BaseReplayBuffer, NaiveReplayBuffer, ReplayBuffer, compose_batch


class Replay:
    """No replay (GRPO): every step trains on its own fresh rollouts only; nothing is kept."""

    buffer: BaseReplayBuffer | None = None
    """What a checkpoint saves (None: nothing)."""
    age_bound: int | None = 0
    """The oldest age (step - birth) a trained rollout can have; None = unbounded."""

    def evict(self, step: int) -> None:
        """Drop what may no longer be replayed at `step` (DESIGN step 5)."""

    def compose(self, fresh: list[Rollout], step: int,
                generator: torch.Generator) -> tuple[list[Rollout], list[Rollout]]:
        """(fresh rollouts trained on, replayed rollouts) for the update at `step` (steps 6-7)."""
        return list(fresh), []

    def store(self, rollouts: list[Rollout]) -> None:
        """Keep this step's rollouts (each with the pi_old the buffer should replay it with)."""

    def __len__(self) -> int:
        return 0


class BufferReplay(Replay):
    """A replay buffer behind the fresh-anchored composition (`replay.anchor`, `replay.replay_ratio`)."""

    def __init__(self, buffer: BaseReplayBuffer, replay_ratio: float, anchor: bool,
                 age_bound: int | None) -> None:
        self.buffer, self.replay_ratio, self.anchor, self.age_bound = buffer, replay_ratio, anchor, age_bound

    def evict(self, step: int) -> None:
        self.buffer.evict(step)

    def compose(self, fresh: list[Rollout], step: int,
                generator: torch.Generator) -> tuple[list[Rollout], list[Rollout]]:
        return compose_batch(fresh, self.buffer, step, self.replay_ratio, self.anchor, generator)

    def store(self, rollouts: list[Rollout]) -> None:
        self.buffer.add(rollouts)

    def __len__(self) -> int:
        return len(self.buffer)


@dataclass(frozen=True)
class Method:
    """A registered method: its builder and the `replay.*` keys it reads."""

    build: Callable[[ReplayConfig], Replay]
    reads: tuple[str, ...] = ()


METHODS: Registry[Method] = Registry("method.name")


def register_method(name: str, reads: tuple[str, ...] = ()) -> Callable[[Callable[[ReplayConfig], Replay]],
                                                                        Callable[[ReplayConfig], Replay]]:
    """Decorator registering a `build(replay_settings) -> Replay` under `name`."""

    def wrap(build: Callable[[ReplayConfig], Replay]) -> Callable[[ReplayConfig], Replay]:
        METHODS.add(name, Method(build, reads))
        return build

    return wrap


@register_method("grpo")
def _grpo(r: ReplayConfig) -> Replay:
    return Replay()


@register_method("replay", reads=("unit", "tau_max", "alpha", "floor", "replay_ratio", "anchor", "max_reuse"))
def _replay(r: ReplayConfig) -> Replay:
    """The paper: rollouts, age-evicted at tau_max, |A|-prioritised, fresh-anchored."""
    buffer = ReplayBuffer(tau_max=r.tau_max, alpha=r.alpha, floor=r.floor, max_reuse=r.max_reuse, unit=r.unit)
    return BufferReplay(buffer, r.replay_ratio, r.anchor, age_bound=r.tau_max)


@register_method("naive_replay", reads=("capacity", "replay_ratio", "anchor"))
def _naive_replay(r: ReplayConfig) -> Replay:
    """Baseline: whole groups in a FIFO of `capacity` rollouts, uniform, no age bound."""
    return BufferReplay(NaiveReplayBuffer(capacity=r.capacity), r.replay_ratio, r.anchor, age_bound=None)


def with_pi_old(fresh: list[Rollout], trained: list[Rollout], pi_old: list[torch.Tensor],
                keep_behaviour: bool = False) -> list[Rollout]:
    """`fresh` with each trained one's old log-probs replaced by `pi_old` (same order as `trained`).

    New records: the rollouts the update saw are left as they were. A fresh rollout that
    was not trained on (displaced with replay.anchor=false) keeps the engine's log-probs.
    `keep_behaviour` keeps each rollout's engine log-probs (`behaviour_logprobs`) for the
    buffer to replay with truncated importance sampling; otherwise they are dropped, so a
    buffer stores them only when the loss uses them.
    """
    new = {id(r): lp for r, lp in zip(trained, pi_old)}
    behaviour = {} if keep_behaviour else {"behaviour_logprobs": None}
    return [replace(r, old_logprobs=new.get(id(r), r.old_logprobs), **behaviour) if id(r) in new or behaviour else r
            for r in fresh]
