"""The `method=naive_replay` baseline: whole groups, FIFO capacity, uniform draws."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import Tensor

from replaygrpo.records import Rollout
from replaygrpo.replay.buffer import BaseReplayBuffer
from replaygrpo.replay.sampling import draw_groups


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
        picked = draw_groups(slots, self._store.col("group")[slots], zeros, k, generator)
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
