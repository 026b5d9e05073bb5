"""Replay buffers (DESIGN steps 4, 5, 7) and the naive baseline.

`ReplayBuffer` is the paper's buffer: individual rollouts, age eviction, and
advantage-prioritised sampling without replacement. `NaiveReplayBuffer` is the
`method=naive_replay` baseline: whole groups, FIFO capacity, uniform.

Choices the paper leaves open, made here:
- Priority floor: P(i) ∝ (|A_i| + floor)^alpha with floor = 1e-6 by default, so a
  tiny advantage still has a (tiny) chance. Computed in log space, so a large alpha
  cannot underflow every weight to zero.
- Sampling without replacement is successive sampling (pick one ∝ weight, remove it,
  repeat), vectorised: draws with replacement whose repeats are rejected, or the
  Gumbel-top-k trick (Efraimidis & Spirakis 2006); both give exactly that law.
- `sample` enforces eligibility itself (born strictly before `step`, age <= tau_max,
  reuse < max_reuse), so a caller who forgot `evict` still never trains on stale data.
- Returned `Rollout.reuse` is the count *after* this draw (this replay included).
- Returned tensors are views of the buffer's immutable storage: do not modify them
  in place (the loss never does; padding into a batch copies). Later adds, evictions
  and compactions never change them. Rollouts of one group share one prompt tensor.
- Group unit (`unit="group"`, and the naive buffer): groups are drawn without
  replacement and taken whole; the last group is truncated (members drawn by the
  same priority) so exactly min(n, eligible) rollouts come back. Replay ratios then
  match exactly across methods, which a fair comparison needs. A group's priority is
  the mean of (|A|+floor)^alpha over its eligible stored rollouts.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from operator import attrgetter
from typing import Any, Literal, Self, Sequence

import torch
from torch import Tensor

from replaygrpo.replay.storage import RolloutStore, segment_ids
from replaygrpo.records import Rollout

_advantage = attrgetter("advantage")


def _gumbel_topk(log_w: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices of k draws without replacement, P ∝ exp(log_w), in draw order."""
    # key_i = log w_i - log E_i with E_i ~ Exp(1): the largest key is picked with
    # probability w_i / sum(w), and so on down (successive sampling).
    u = torch.rand(log_w.shape, dtype=torch.float64, generator=generator)
    keys = log_w - torch.log(-torch.log1p(-u))  # E = -log(1 - U), U ~ U[0, 1)
    return torch.topk(keys, k).indices


def _draw(
    log_w: Tensor, k: int, generator: torch.Generator, skip: Tensor | None = None, w: Tensor | None = None
) -> Tensor:
    """Indices of k draws without replacement, P ∝ exp(log_w), in draw order.

    skip: (len(log_w),) bool, entries never drawn (default: those at -inf); at least
    k must be left. They change nothing else: the draw and the generator state after
    it are those without them, so a buffer can skip its ineligible slots rather than
    gather the eligible ones, and draw what a compacted (reloaded) copy draws.
    w: exp(log_w - c) for a constant c, 0 where skipped, if the caller has it.

    Same distribution as `_gumbel_topk` (successive sampling), cheaper when k is
    small against the number left: draw with replacement from the CDF and keep
    first occurrences. A repeat is a rejection, and "draw ∝ w, reject the taken
    ones" is exactly "draw ∝ w among the rest". Falls back to Gumbel-top-k on what
    is left when repeats pile up (a few heavy weights, or k near the number left).
    """
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    keep = log_w > -math.inf if skip is None else ~skip
    m = int(keep.sum())
    if 2 * k > m:
        if m == log_w.numel():
            return _gumbel_topk(log_w, k, generator)
        idx = keep.nonzero().squeeze(1)
        return idx[_gumbel_topk(log_w[idx], k, generator)]
    # Skipped entries weigh exactly 0, and adding 0 leaves a sum unchanged, so the CDF
    # takes the same values at the kept entries as without the skipped ones.
    cdf = torch.cumsum(w, 0) if w is not None else None
    if cdf is None or not float(cdf[-1]) > 1e-200:  # none given, or c so large that w underflows
        top = log_w.masked_fill(~keep, -math.inf).max()
        cdf = torch.cumsum((log_w - top).exp().masked_fill_(~keep, 0.0), 0)
    total = cdf[-1:]
    last = int(torch.searchsorted(cdf, total))  # the last entry that adds mass
    taken = torch.zeros(log_w.numel(), dtype=torch.bool)
    out: list[Tensor] = []
    got = 0
    for _ in range(4):
        need = k - got
        u = torch.rand(need + need // 4 + 8, dtype=torch.float64, generator=generator)
        cand = torch.searchsorted(cdf, u * total, right=True).clamp_(max=last)
        # Keep the first occurrence of each candidate not taken in earlier rounds.
        uniq, inv = torch.unique(cand, return_inverse=True)
        pos = torch.arange(cand.numel())
        first = torch.full((uniq.numel(),), cand.numel()).scatter_reduce(0, inv, pos, "amin")
        new = cand[(first[inv] == pos) & ~taken[cand]][:need]
        taken[new] = True
        out.append(new)
        got += new.numel()
        if got == k:
            return torch.cat(out)
    # Gumbel-top-k over the kept entries (taken ones masked), as without the skipped ones.
    idx = keep.nonzero().squeeze(1)
    rest = log_w[idx].masked_fill(taken[idx], -math.inf)
    out.append(idx[_gumbel_topk(rest, k - got, generator)])
    return torch.cat(out)


def _draw_groups(
    slots: Tensor, groups: Tensor, log_w: Tensor, k: int, generator: torch.Generator
) -> Tensor:
    """k slots taken as whole groups, groups drawn ∝ mean(w), the last one truncated.

    slots, groups, log_w: (M,) eligible slots, their group ids, their log-weights.
    """
    # Arrange members group by group, insertion order inside. Rollouts of a group
    # usually arrive together, so each group is one run and no sort is needed.
    runs, run_len = torch.unique_consecutive(groups, return_counts=True)
    if torch.unique(runs).numel() == runs.numel():
        members, count = torch.arange(groups.numel()), run_len
    else:
        members = torch.argsort(groups, stable=True)
        count = torch.unique_consecutive(groups[members], return_counts=True)[1]
    inv = segment_ids(count)  # group of members[i]
    lw = log_w[members]
    # log(mean w) per group, stable: log-sum-exp around the group's max.
    top = torch.full((count.numel(),), -math.inf, dtype=torch.float64)
    top = top.scatter_reduce(0, inv, lw, "amax")
    total = torch.zeros_like(top).index_add_(0, inv, (lw - top[inv]).exp())
    log_mean = top + total.log() - count.log()
    # Every group has >= 1 member, so k groups always suffice.
    order = _draw(log_mean, min(k, count.numel()), generator)
    start = torch.cumsum(count, 0) - count
    taken: list[Tensor] = []
    need = k
    for s, c in zip(start[order].tolist(), count[order].tolist()):
        m = members[s : s + c]
        if c > need:  # last group: keep `need` members, drawn by the same priority
            m = m[_gumbel_topk(log_w[m], need, generator).sort().values]
        taken.append(m)
        need -= m.numel()
        if need == 0:
            break
    return slots[torch.cat(taken)]


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
        """Bytes of tensor storage held (token chunks and per-rollout columns).

        Not counted: Python objects, mainly one cached prompt view per stored group
        (~0.6 KB each, ~0.08 byte per token at 8 rollouts of 1,000 tokens a group).
        """
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
        # weights of `_draw`, w = exp(log_w - w_top), w_top the largest log_w stored:
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
        keep = [r for r, a in zip(rollouts, adv) if a != 0.0]
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
            # eligible ones only (see _draw), without gathering them.
            off = ~ok
            picked = _draw(log_w, k, generator, skip=off, w=self._weights(off))
        else:
            slots = ok.nonzero().squeeze(1)
            picked = _draw_groups(slots, self._store.col("group")[slots], log_w[slots], k, generator)
        self._store.col("reuse")[picked] += 1
        return self._store.rollouts(picked)


class NaiveReplayBuffer(BaseReplayBuffer):
    """Baseline: whole groups, FIFO with `capacity` counted in rollouts, uniform.

    A group whose advantages are all zero is skipped; otherwise all its rollouts are
    stored (zeros included: that is the naive baseline). Groups are keyed by
    group_id; rollouts of one group arriving in two add calls join the same group
    and keep its FIFO place. No age bound, no reuse bound.
    """

    kind = "naive"

    def __init__(self, capacity: int) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._fifo: OrderedDict[int, int] = OrderedDict()  # group_id -> stored rollouts

    def _config(self) -> dict[str, Any]:
        return {"capacity": self.capacity}

    def add(self, rollouts: Sequence[Rollout]) -> int:
        """Store whole non-degenerate groups, then trim the oldest to capacity.

        Returns the number accepted by this call (before the capacity trim, which
        counts as eviction, as if `evict` had run).
        """
        groups: dict[int, list[Rollout]] = {}
        for r in rollouts:
            groups.setdefault(r.group_id, []).append(r)
        keep = [g for g in groups.values() if any(r.advantage != 0.0 for r in g)]
        self._store.append([r for g in keep for r in g])
        for g in keep:
            self._fifo[g[0].group_id] = self._fifo.get(g[0].group_id, 0) + len(g)
        self._trim()
        return sum(len(g) for g in keep)

    def _trim(self) -> int:
        drop, total = [], len(self._store)
        while total > self.capacity:
            gid, size = self._fifo.popitem(last=False)
            drop.append(gid)
            total -= size
        if not drop:
            return 0
        return self._store.kill(torch.isin(self._store.col("group"), torch.tensor(drop, dtype=torch.int64)))

    def evict(self, step: int) -> int:
        """No age bound: only re-checks capacity, which `add` already enforces."""
        return self._trim()

    def sample(self, n: int, step: int, generator: torch.Generator) -> list[Rollout]:
        """Whole groups born before `step`, uniformly without replacement, until n."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        slots = self._eligible(step)
        k = min(n, int(slots.numel()))
        if k == 0:
            return []
        zeros = torch.zeros(slots.numel(), dtype=torch.float64)  # uniform weights
        picked = _draw_groups(slots, self._store.col("group")[slots], zeros, k, generator)
        self._store.col("reuse")[picked] += 1
        return self._store.rollouts(picked)

    def _eligible_mask(self, step: int) -> Tensor:
        return self._store.col("alive") & (self._store.col("birth") < step)

    def _extra_state(self) -> dict[str, Tensor]:
        return {
            "fifo.group": torch.tensor(list(self._fifo.keys()), dtype=torch.int64),
            "fifo.size": torch.tensor(list(self._fifo.values()), dtype=torch.int64),
        }

    def _load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        keys, sizes = tensors["fifo.group"].tolist(), tensors["fifo.size"].tolist()
        self._fifo = OrderedDict(zip(keys, sizes))
