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
  in place (the loss never does; padding into a batch copies).
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
from typing import Any, Literal, Self, Sequence

import torch
from torch import Tensor

from replaygrpo.replay.storage import RolloutStore, segment_ids
from replaygrpo.rollout.types import Rollout


def _gumbel_topk(log_w: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices of k draws without replacement, P ∝ exp(log_w), in draw order."""
    # key_i = log w_i - log E_i with E_i ~ Exp(1): the largest key is picked with
    # probability w_i / sum(w), and so on down (successive sampling).
    u = torch.rand(log_w.shape, dtype=torch.float64, generator=generator)
    keys = log_w - torch.log(-torch.log1p(-u))  # E = -log(1 - U), U ~ U[0, 1)
    return torch.topk(keys, k).indices


def _draw(log_w: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices of k draws without replacement, P ∝ exp(log_w), in draw order.

    Same distribution as `_gumbel_topk` (successive sampling), cheaper when k is
    small against len(log_w): draw with replacement from the CDF and keep first
    occurrences. A repeat is a rejection, and "draw ∝ w, reject the taken ones" is
    exactly "draw ∝ w among the rest". Falls back to Gumbel-top-k on what is left
    when repeats pile up (a few heavy weights, or k near len(log_w)).
    """
    m = log_w.numel()
    if 2 * k > m:
        return _gumbel_topk(log_w, k, generator)
    cdf = torch.cumsum((log_w - log_w.max()).exp(), 0)
    taken = torch.zeros(m, dtype=torch.bool)
    out: list[Tensor] = []
    got = 0
    for _ in range(4):
        need = k - got
        u = torch.rand(need + need // 4 + 8, dtype=torch.float64, generator=generator)
        cand = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_(max=m - 1)
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
    out.append(_gumbel_topk(log_w.masked_fill(taken, -math.inf), k - got, generator))
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

    def __init__(self) -> None:
        self._store = RolloutStore()

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
    def _eligible(self, step: int) -> Tensor:
        """Slots that `sample` may draw from at `step`, in insertion order."""

    def num_eligible(self, step: int) -> int:
        """How many stored rollouts `sample` may return at `step`."""
        return int(self._eligible(step).numel())

    def __len__(self) -> int:
        return len(self._store)

    @property
    def num_tokens(self) -> int:
        """Completion tokens of the stored rollouts."""
        return self._store.num_tokens

    @property
    def nbytes(self) -> int:
        """Bytes of tensor storage held (token chunks and per-rollout columns)."""
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
        super().__init__()
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
        keep = [r for r in rollouts if r.advantage != 0.0]
        if not all(math.isfinite(r.advantage) for r in keep):
            raise ValueError("advantages must be finite")
        self._store.append(keep)
        return len(keep)

    def _too_old(self, step: int) -> Tensor:
        birth = self._store.col("birth")
        if self.tau_max is None:
            return torch.zeros_like(birth, dtype=torch.bool)
        return step - birth > self.tau_max

    def _used_up(self) -> Tensor:
        reuse = self._store.col("reuse")
        if self.max_reuse is None:
            return torch.zeros_like(reuse, dtype=torch.bool)
        return reuse >= self.max_reuse

    def evict(self, step: int) -> int:
        """Drop rollouts older than tau_max at `step` and those that reached max_reuse."""
        dead = self._store.col("alive") & (self._too_old(step) | self._used_up())
        return self._store.kill(dead.nonzero().squeeze(1))

    def _eligible(self, step: int) -> Tensor:
        ok = self._store.col("alive") & (self._store.col("birth") < step)
        ok &= ~self._too_old(step) & ~self._used_up()
        return ok.nonzero().squeeze(1)

    def sample(self, n: int, step: int, generator: torch.Generator) -> list[Rollout]:
        """min(n, eligible) distinct rollouts, P ∝ (|A| + floor)^alpha, in draw order."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        slots = self._eligible(step)
        k = min(n, int(slots.numel()))
        if k == 0:
            return []
        adv = self._store.col("advantage")[slots]
        log_w = self.alpha * (adv.abs() + self.floor).log()
        if self.unit == "rollout":
            picked = slots[_draw(log_w, k, generator)]
        else:
            picked = _draw_groups(slots, self._store.col("group")[slots], log_w, k, generator)
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
        hit = torch.isin(self._store.col("group"), torch.tensor(drop, dtype=torch.int64))
        return self._store.kill((hit & self._store.col("alive")).nonzero().squeeze(1))

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

    def _eligible(self, step: int) -> Tensor:
        ok = self._store.col("alive") & (self._store.col("birth") < step)
        return ok.nonzero().squeeze(1)

    def _extra_state(self) -> dict[str, Tensor]:
        return {
            "fifo.group": torch.tensor(list(self._fifo.keys()), dtype=torch.int64),
            "fifo.size": torch.tensor(list(self._fifo.values()), dtype=torch.int64),
        }

    def _load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        keys, sizes = tensors["fifo.group"].tolist(), tensors["fifo.size"].tolist()
        self._fifo = OrderedDict(zip(keys, sizes))
