"""The replay buffer interface and the paper's buffer (DESIGN steps 4, 5, 7).

`BaseReplayBuffer` is what the training loop sees; `ReplayBuffer` is the paper's
buffer: individual rollouts, age eviction, and advantage-prioritised sampling
without replacement. The naive baseline is in `naive.py`, the draw in `sampling.py`,
the packed storage both buffers share in `storage.py`.

Choices the paper leaves open, made here:
- Priority floor: P(i) ∝ (|A_i| + floor)^alpha with floor = 1e-6 by default, so a
  tiny advantage still has a (tiny) chance. Computed in log space, so a large alpha
  cannot underflow every weight to zero.
- `sample` enforces eligibility itself (born strictly before `step`, age <= tau_max,
  reuse < max_reuse), so a caller who forgot `evict` still never trains on stale data.
- Returned `Rollout.reuse` is the count *after* this draw (this replay included).
- Returned rollouts are `StoredRollout`s (drawn.py): their tensors are views of the
  buffer's immutable storage, made when a field is first read. Do not modify them in
  place (the loss never does; padding into a batch copies). Later adds, evictions and
  compactions never change them. Drawn rollouts of one group share one prompt tensor.
- Group unit (`unit="group"`, and the naive buffer): groups are drawn without
  replacement and taken whole; the last group is truncated (members drawn by the
  same priority) so exactly min(n, eligible) rollouts come back. Replay ratios then
  match exactly across methods, which a fair comparison needs. A group's priority is
  the mean of (|A|+floor)^alpha over its eligible stored rollouts.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from itertools import compress
from operator import attrgetter
from typing import Any, Literal, Self, Sequence

import torch
from torch import Tensor

from replaygrpo.replay.sampling import draw, draw_groups
from replaygrpo.replay.storage import RolloutStore
from replaygrpo.records import Rollout

_advantage = attrgetter("advantage")


class BaseReplayBuffer(ABC):
    """What the training loop sees: add, evict, sample, size, checkpoint."""

    kind: str

    def __init__(self, extra_columns: dict[str, torch.dtype] | None = None) -> None:
        self._store = RolloutStore(extra_columns)

    @abstractmethod
    def add(self, rollouts: Sequence[Rollout]) -> int:
        """Store the rollouts this buffer keeps; return how many were stored."""

    @abstractmethod
    def evict(self, step: int) -> int:
        """Drop what may no longer be replayed at `step`; return how many were dropped."""

    @abstractmethod
    def sample(self, n: int, step: int, generator: torch.Generator) -> list[Rollout]:
        """Up to n distinct rollouts born before `step`; each one's reuse count += 1."""

    @abstractmethod
    def _eligible_mask(self, step: int) -> Tensor:
        """(num_slots,) bool: the slots that `sample` may draw from at `step`."""

    def _eligible(self, step: int) -> Tensor:
        """Slots that `sample` may draw from at `step`, in insertion order."""
        return self._eligible_mask(step).nonzero().squeeze(1)

    def num_eligible(self, step: int) -> int:
        """How many stored rollouts `sample` may return at `step`."""
        return int(self._eligible_mask(step).sum())

    def __len__(self) -> int:
        return len(self._store)

    @property
    def num_tokens(self) -> int:
        """Completion tokens of the stored rollouts."""
        return self._store.num_tokens

    @property
    def nbytes(self) -> int:
        """Bytes of tensor storage held (token chunks and per-rollout columns); the
        store keeps no Python object per rollout or group, only one per add call."""
        return self._store.nbytes

    def ages(self, step: int) -> Tensor:
        """(len(self),) int64: step - birth_step of each stored rollout."""
        return step - self._store.col("birth")[self._store.live_slots()]

    def _config(self) -> dict[str, Any]:
        return {}

    def _extra_state(self) -> dict[str, Tensor]:
        return {}

    def _load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        pass

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(tensors for safetensors, JSON-serialisable metadata); no pickle."""
        tensors, store_meta = self._store.state_dict()
        tensors.update(self._extra_state())
        return tensors, {"kind": self.kind, "version": 1, "config": self._config(), "store": store_meta}

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore the contents; this instance's policy (tau_max, alpha, ...) is kept."""
        if meta.get("kind") != self.kind:
            raise ValueError(f"state is for a {meta.get('kind')!r} buffer, not {self.kind!r}")
        self._store.load_state_dict(tensors, meta["store"])
        self._load_extra_state(tensors)

    @classmethod
    def from_state_dict(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Self:
        """A buffer with the saved policy and contents."""
        buf = cls(**meta["config"])
        buf.load_state_dict(tensors, meta)
        return buf


class ReplayBuffer(BaseReplayBuffer):
    """The paper's buffer: individual rollouts, age-evicted, advantage-prioritised.

    tau_max: max age (step - birth_step) of a replayable rollout; None = no bound.
    alpha: priority exponent, P(i) ∝ (|A_i| + floor)^alpha; 0 = uniform.
    floor: added to |A| before the exponent (see module docstring).
    max_reuse: a rollout replayed this many times is no longer sampled, and is
        dropped at the next evict; None = unlimited.
    unit: "rollout" (the paper) or "group" (ablation: priority and draw per group).
    """

    kind = "replay"

    def __init__(
        self,
        tau_max: int | None,
        alpha: float = 1.0,
        floor: float = 1e-6,
        max_reuse: int | None = None,
        unit: Literal["rollout", "group"] = "rollout",
    ) -> None:
        # Per slot: log_w = alpha * log(|A| + floor) (-inf once evicted), and the CDF
        # weights of `draw`, w = exp(log_w - w_top), w_top the largest log_w stored:
        # redone over the buffer only when w_top changes, not at every draw. w_top
        # depends on live rollouts only, so a reloaded copy computes the same w.
        super().__init__(extra_columns={"log_w": torch.float64, "w": torch.float64})
        self._w_top: float | None = None  # None: w not computed yet
        if tau_max is not None and tau_max < 0:
            raise ValueError(f"tau_max must be >= 0 or None, got {tau_max}")
        if alpha < 0 or floor < 0:
            raise ValueError(f"alpha and floor must be >= 0, got {alpha}, {floor}")
        if max_reuse is not None and max_reuse < 1:
            raise ValueError(f"max_reuse must be >= 1 or None, got {max_reuse}")
        if unit not in ("rollout", "group"):
            raise ValueError(f"unit must be 'rollout' or 'group', got {unit!r}")
        self.tau_max, self.alpha, self.floor = tau_max, float(alpha), float(floor)
        self.max_reuse, self.unit = max_reuse, unit

    def _config(self) -> dict[str, Any]:
        return {
            "tau_max": self.tau_max,
            "alpha": self.alpha,
            "floor": self.floor,
            "max_reuse": self.max_reuse,
            "unit": self.unit,
        }

    def add(self, rollouts: Sequence[Rollout]) -> int:
        """Store every rollout with A != 0 (A = 0 carries no gradient)."""
        adv = list(map(_advantage, rollouts))
        if not all(map(math.isfinite, adv)):
            raise ValueError("advantages must be finite")
        keep = list(compress(rollouts, adv))  # A != 0 (0.0 and -0.0 are false)
        start = self._store.append(keep)
        self._set_log_w(start)
        return len(keep)

    def _set_log_w(self, start: int) -> None:
        """Fill log_w (and w) of slots start.. from their advantages."""
        adv = self._store.col("advantage")[start:]
        log_w = self.alpha * (adv.abs() + self.floor).log()
        self._store.col("log_w")[start:] = log_w
        if self._w_top is not None:
            self._store.col("w")[start:] = (log_w - self._w_top).exp()

    def _load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        self._w_top = None
        self._set_log_w(0)

    def _weights(self, off: Tensor) -> Tensor:
        """exp(log_w - w_top) per slot, 0 at the slots `off`."""
        log_w = self._store.col("log_w")
        top = float(log_w.max())
        if top != self._w_top:
            self._w_top = top
            self._store.col("w").copy_((log_w - top).exp())
        return self._store.col("w").masked_fill(off, 0.0)

    def _dead(self, step: int) -> Tensor | None:
        """(num_slots,) bool: too old at `step` (age > tau_max) or used up; None if neither can happen."""
        dead = None
        if self.tau_max is not None:
            dead = self._store.col("birth") < step - self.tau_max  # age = step - birth > tau_max
        if self.max_reuse is not None:
            used_up = self._store.col("reuse") >= self.max_reuse
            dead = used_up if dead is None else dead | used_up
        return dead

    def evict(self, step: int) -> int:
        """Drop rollouts older than tau_max at `step` and those that reached max_reuse."""
        dead = self._dead(step)
        if dead is None:
            return 0
        self._store.col("log_w").masked_fill_(dead, -math.inf)  # out of w_top (see __init__)
        return self._store.kill(dead)

    def _eligible_mask(self, step: int) -> Tensor:
        ok = self._store.col("alive") & (self._store.col("birth") < step)
        dead = self._dead(step)
        if dead is not None:
            ok &= ~dead
        return ok

    def sample(self, n: int, step: int, generator: torch.Generator) -> list[Rollout]:
        """min(n, eligible) distinct rollouts, P ∝ (|A| + floor)^alpha, in draw order."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        ok = self._eligible_mask(step)
        k = min(n, int(ok.sum()))
        if k == 0:
            return []
        log_w = self._store.col("log_w")
        if self.unit == "rollout":
            # Over every slot, skipping the ineligible: the same draw as over the
            # eligible ones only (see draw), without gathering them.
            off = ~ok
            picked = draw(log_w, k, generator, skip=off, w=self._weights(off))
        else:
            slots = ok.nonzero().squeeze(1)
            picked = draw_groups(slots, self._store.col("group")[slots], log_w[slots], k, generator)
        self._store.col("reuse")[picked] += 1
        return self._store.rollouts(picked)
