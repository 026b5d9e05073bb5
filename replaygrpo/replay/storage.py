"""Compact storage of rollouts: the mechanics under both replay buffers, no policy.

Layout. Rollouts added in one call are packed into one immutable *chunk*: their
completion ids (int32) and behaviour log-probs (float32) concatenated, and their
prompt ids stored once per group (all G rollouts of a group share the prompt). So a
stored completion token costs 8 bytes. Per-rollout scalars (birth step, advantage,
reuse count, offsets into the chunk, ...) live in column tensors indexed by *slot*,
so eviction and eligibility are vectorised over the buffer.

Invariants the buffers rely on:
- Live slots are always in insertion order (dead slots are compacted away with
  the order kept), and a state_dict round trip keeps that order. Samplers draw over
  "live eligible slots in order", so the same generator state gives the same draw.
- Chunks are never written after they are built; a chunk that is mostly dead is
  rebuilt into a new tensor. Returned rollouts are therefore views that stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from replaygrpo.rollout.types import Rollout

# Per-slot columns. int64 everywhere keeps indexing simple; at ~100 bytes a rollout
# this is ~0.1 byte per token for 1,000-token completions.
COLUMNS: dict[str, torch.dtype] = {
    "birth": torch.int64,
    "group": torch.int64,
    "prompt_id": torch.int64,
    "reward": torch.float64,
    "advantage": torch.float64,
    "reuse": torch.int64,
    "alive": torch.bool,
    "chunk": torch.int64,
    "c_off": torch.int64,  # completion offset in the chunk
    "c_len": torch.int64,
    "p_off": torch.int64,  # prompt offset in the chunk (shared within a group)
    "p_len": torch.int64,
}


# Column order `RolloutStore.rollouts` unpacks.
_ROLLOUT_COLUMNS = (
    "chunk", "c_off", "c_len", "p_off", "p_len",
    "reward", "advantage", "birth", "prompt_id", "group", "reuse",
)


@dataclass
class _Chunk:
    ids: Tensor  # (T,) int32, completions of the chunk's rollouts, concatenated
    logp: Tensor  # (T,) float32, behaviour log-probs aligned with ids
    prompts: Tensor  # (Q,) int32, one prompt per group, concatenated
    live: int = 0  # live rollouts pointing into this chunk
    live_tokens: int = 0  # their completion tokens

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ids, self.logp, self.prompts))


def segment_ids(lengths: Tensor) -> Tensor:
    """(sum(lengths),) int64: i repeated lengths[i] times, like repeat_interleave.

    Written with cumsum because torch.repeat_interleave hands even tiny inputs to
    its thread pool, which costs milliseconds on a busy machine.
    """
    total = int(lengths.sum())
    starts = torch.cumsum(lengths, 0)[:-1]
    starts = starts[starts < total]  # empty trailing segments start at the end
    marks = torch.zeros(total, dtype=torch.int64).index_add_(0, starts, torch.ones_like(starts))
    return torch.cumsum(marks, 0)


def _check_shared_prompts(rollouts: Sequence[Rollout], src: Tensor) -> None:
    """Raise unless rollout i has the same prompt as rollout src[i] (vectorised)."""
    # A shared group id promises a shared prompt; check it rather than silently
    # train a rollout on another rollout's prompt.
    p_len = torch.tensor([r.prompt_ids.numel() for r in rollouts], dtype=torch.int64)
    same = torch.equal(p_len, p_len[src])
    if same:  # then compare token by token, each against its group's first prompt
        p_all = torch.cat([r.prompt_ids for r in rollouts])
        p_start = torch.cumsum(p_len, 0) - p_len
        owner = segment_ids(p_len)
        shifted = torch.arange(p_all.numel()) - p_start[owner] + p_start[src[owner]]
        same = torch.equal(p_all, p_all[shifted])
    if not same:
        raise ValueError("rollouts with the same group_id must have the same prompt_ids")


def _pack(rollouts: Sequence[Rollout]) -> tuple[_Chunk, dict[str, Tensor]]:
    """Concatenate rollouts into one chunk; return it and their offset columns."""
    c_len = torch.tensor([r.completion_ids.numel() for r in rollouts], dtype=torch.int64)
    l_len = torch.tensor([r.old_logprobs.numel() for r in rollouts], dtype=torch.int64)
    if not torch.equal(c_len, l_len):
        raise ValueError("each rollout needs one old log-prob per completion token")
    # torch.cat copies, so the chunk owns compact storage even when the caller's
    # tensors are row views of a padded batch.
    ids = torch.cat([r.completion_ids for r in rollouts]).to(torch.int32)
    logp = torch.cat([r.old_logprobs for r in rollouts]).to(torch.float32)

    # Prompt dedup: a group's prompt is stored once, taken from its first rollout.
    first: dict[int, int] = {}  # group_id -> index of its first rollout here
    src = [first.setdefault(r.group_id, i) for i, r in enumerate(rollouts)]
    if any(r.prompt_ids is not rollouts[j].prompt_ids for r, j in zip(rollouts, src)):
        _check_shared_prompts(rollouts, torch.tensor(src))
    heads = [rollouts[j].prompt_ids for j in first.values()]
    prompts = torch.cat(heads).to(torch.int32)
    head_len = torch.tensor([t.numel() for t in heads], dtype=torch.int64)
    head_index = {j: g for g, j in enumerate(first.values())}
    group = torch.tensor([head_index[j] for j in src], dtype=torch.int64)
    cols = {
        "c_off": torch.cumsum(c_len, 0) - c_len,
        "c_len": c_len,
        "p_off": (torch.cumsum(head_len, 0) - head_len)[group],
        "p_len": head_len[group],
    }
    chunk = _Chunk(ids, logp, prompts, live=len(rollouts), live_tokens=int(ids.numel()))
    return chunk, cols


class RolloutStore:
    """Slots of rollouts in insertion order, packed in chunks (see module docstring)."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self._cols = {k: torch.empty(0, dtype=d) for k, d in COLUMNS.items()}
        self._n = 0  # slots in use (live and dead), a prefix of each column
        self._alive = 0
        self._tokens = 0  # completion tokens of live rollouts
        self._chunks: dict[int, _Chunk] = {}
        self._next_chunk = 0

    def __len__(self) -> int:
        return self._alive

    @property
    def num_slots(self) -> int:
        return self._n

    @property
    def num_tokens(self) -> int:
        return self._tokens

    @property
    def nbytes(self) -> int:
        cols = sum(c.numel() * c.element_size() for c in self._cols.values())
        return cols + sum(ch.nbytes for ch in self._chunks.values())

    def col(self, name: str) -> Tensor:
        """View of one column over the used slots (live and dead): index with slots."""
        return self._cols[name][: self._n]

    def live_slots(self) -> Tensor:
        return self.col("alive").nonzero().squeeze(1)

    def append(self, rollouts: Sequence[Rollout]) -> None:
        if not rollouts:
            return
        chunk, cols = _pack(rollouts)
        k = len(rollouts)
        cols["birth"] = torch.tensor([r.birth_step for r in rollouts], dtype=torch.int64)
        cols["group"] = torch.tensor([r.group_id for r in rollouts], dtype=torch.int64)
        cols["prompt_id"] = torch.tensor([r.prompt_id for r in rollouts], dtype=torch.int64)
        cols["reward"] = torch.tensor([r.reward for r in rollouts], dtype=torch.float64)
        cols["advantage"] = torch.tensor([r.advantage for r in rollouts], dtype=torch.float64)
        cols["reuse"] = torch.tensor([r.reuse for r in rollouts], dtype=torch.int64)
        cols["alive"] = torch.ones(k, dtype=torch.bool)
        cols["chunk"] = torch.full((k,), self._next_chunk, dtype=torch.int64)
        self._reserve(self._n + k)
        for name, values in cols.items():
            self._cols[name][self._n : self._n + k] = values
        self._chunks[self._next_chunk] = chunk
        self._next_chunk += 1
        self._n += k
        self._alive += k
        self._tokens += chunk.live_tokens

    def kill(self, slots: Tensor) -> int:
        """Remove the given slots (dead ones are ignored); return how many died."""
        alive = self.col("alive")
        slots = slots[alive[slots]].unique()
        if slots.numel() == 0:
            return 0
        alive[slots] = False
        self._alive -= slots.numel()
        cids, inv = torch.unique(self.col("chunk")[slots], return_inverse=True)
        counts = torch.bincount(inv, minlength=cids.numel())
        toks = torch.zeros(cids.numel(), dtype=torch.int64).index_add_(0, inv, self.col("c_len")[slots])
        self._tokens -= int(toks.sum())
        for cid, c, t in zip(cids.tolist(), counts.tolist(), toks.tolist()):
            ch = self._chunks[cid]
            ch.live -= c
            ch.live_tokens -= t
            if ch.live == 0:
                del self._chunks[cid]
            elif 2 * ch.live_tokens < ch.ids.numel():
                # Mostly dead (e.g. max_reuse took half of it): rebuild so memory
                # stays within 2x of the live tokens.
                self._repack(cid)
        # Dead slots cost memory and time in every vectorised scan; compacting is
        # O(slots), so doing it when they reach a quarter of the live ones is cheap.
        if self._n - self._alive > self._alive // 4 + 64:
            self._compact()
        return int(slots.numel())

    def rollouts(self, slots: Tensor) -> list[Rollout]:
        """Rollouts at `slots`; their tensors are views of immutable chunk storage."""
        c = [self.col(k)[slots].tolist() for k in _ROLLOUT_COLUMNS]
        chunks = self._chunks
        return [
            Rollout(
                prompt_ids=chunks[ch].prompts[po : po + pl],
                completion_ids=chunks[ch].ids[co : co + cl],
                old_logprobs=chunks[ch].logp[co : co + cl],
                reward=rw,
                advantage=adv,
                birth_step=b,
                prompt_id=pid,
                group_id=gid,
                reuse=ru,
            )
            for ch, co, cl, po, pl, rw, adv, b, pid, gid, ru in zip(*c)
        ]

    def _reserve(self, n: int) -> None:
        cap = self._cols["alive"].numel()
        if n <= cap:
            return
        new_cap = max(n, 2 * cap, 64)
        for name, col in self._cols.items():
            grown = torch.zeros(new_cap, dtype=col.dtype)
            grown[: self._n] = col[: self._n]
            self._cols[name] = grown

    def _compact(self) -> None:
        keep = self.live_slots()  # ascending: insertion order is kept
        for col in self._cols.values():
            col[: keep.numel()] = col[keep]
        self._n = int(keep.numel())

    def _repack(self, cid: int) -> None:
        slots = ((self.col("chunk") == cid) & self.col("alive")).nonzero().squeeze(1)
        chunk, cols = _pack(self.rollouts(slots))
        self._chunks[cid] = chunk
        for name, values in cols.items():
            self._cols[name][slots] = values

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Live slots (in order) and chunks as tensors; chunk ids as JSON metadata."""
        keep = self.live_slots()
        tensors = {f"slot.{k}": self.col(k)[keep] for k in COLUMNS if k != "alive"}
        for cid, ch in self._chunks.items():
            tensors[f"chunk.{cid}.ids"] = ch.ids
            tensors[f"chunk.{cid}.logp"] = ch.logp
            tensors[f"chunk.{cid}.prompts"] = ch.prompts
        return tensors, {"chunks": sorted(self._chunks), "next_chunk": self._next_chunk}

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self._clear()
        n = int(tensors["slot.birth"].numel())
        self._reserve(n)
        for k in COLUMNS:
            values = tensors[f"slot.{k}"] if k != "alive" else torch.ones(n, dtype=torch.bool)
            self._cols[k][:n] = values.to(COLUMNS[k])
        self._n = self._alive = n
        self._tokens = int(self.col("c_len").sum())
        for cid in meta["chunks"]:
            chunk_slots = self.col("chunk") == cid
            self._chunks[cid] = _Chunk(
                ids=tensors[f"chunk.{cid}.ids"].to(torch.int32),
                logp=tensors[f"chunk.{cid}.logp"].to(torch.float32),
                prompts=tensors[f"chunk.{cid}.prompts"].to(torch.int32),
                live=int(chunk_slots.sum()),
                live_tokens=int(self.col("c_len")[chunk_slots].sum()),
            )
        self._next_chunk = int(meta["next_chunk"])
