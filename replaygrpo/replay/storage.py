"""Packed storage of rollouts: the mechanics under both replay buffers, no policy.

Layout. Rollouts added in one call are packed into one *chunk*: their completion ids
(int32) and old log-probs (float32) concatenated, and their prompt ids stored once per
group (all G rollouts of a group share the prompt). So a stored completion token costs 8
bytes; 12 where the rollouts carry the engine's behaviour log-probs beside a trainer
pi_old (truncated importance sampling on; a chunk without them holds none). Per-rollout
scalars (birth step, advantage, reuse count, offsets into the chunk, ...) live in column
tensors indexed by *slot*, so eviction, eligibility and the priority draw are vectorised
over the buffer. No Python object is kept per stored rollout or group.

Reads. `rollouts(slots)` is the only place records are made, for the few slots a
sample draws: one `StoredRollout` per slot (drawn.py), its scalars set and its tensors
sliced from its chunk on first read. A draw of 512 thus makes ~520 tracked objects in the
buffer's step rather than ~2,000 (records, two views each, a prompt view per group); the
views are made by whoever reads them (the update reads them all). The drawn rollouts of
one group share one prompt view. Nothing is copied.

Cost at paper scale (scripts/bench_buffer.py: add 1,024 rollouts of 1,000 tokens,
evict, sample 512 of 100,000): copying the added tokens once, reading the added records
field by field, vector ops over the ~100k slots, and 512 records for the draw.
`append` reads each field of each rollout once, converts the scalars with
array.array, copies tokens and log-probs with one `torch.cat` each, and checks that
a group's rollouts share a prompt by identity (as `make_rollouts` gives them), else
from the tensors' memory addresses (rows of one prompt batch), before comparing any tokens.

Invariants the buffers rely on:
- Live slots are always in insertion order (dead slots are compacted away with
  the order kept), and a state_dict round trip keeps that order. Samplers draw over
  "live eligible slots in order", so the same generator state gives the same draw.
- Chunks are never written after they are built: `kill`, `_compact` and `_repack`
  only write the columns, and a repack copies the live rollouts into a new chunk. A
  returned rollout holds its chunk object (and, once read, views of its tensors), so
  no later add, evict, repack or compaction can change or free what an earlier
  `sample` handed out, read before or after.
- A chunk is rebuilt when fewer than half of its completion tokens are live, and
  freed when none are, so memory stays within about 2x of the live tokens.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import repeat, starmap
from operator import attrgetter, eq, is_, is_not
from typing import Any, Sequence

import torch
from torch import Tensor

from replaygrpo.records import Rollout
from replaygrpo.replay.drawn import Draw, records

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

_dtype = attrgetter("dtype")
_ARRAY_CODE = {torch.int64: "q", torch.float64: "d"}  # array.array type codes

# Integer columns `RolloutStore._locate` reads (with one tolist), in unpacking order.
_INT_COLUMNS = ("chunk", "c_off", "c_len", "p_off", "p_len", "birth", "prompt_id", "group", "reuse")


@dataclass(slots=True)
class _Chunk:
    """The tokens of one add call (or of one repack), never written after it is built."""

    ids: Tensor  # (T,) int32, completions of the chunk's rollouts, concatenated
    logp: Tensor  # (T,) float32, old log-probs (pi_old) aligned with ids
    prompts: Tensor  # (Q,) int32, one prompt per group, concatenated
    live: int = 0  # live rollouts pointing into this chunk
    live_tokens: int = 0  # their completion tokens
    behav: Tensor | None = None  # (T,) float32 engine log-probs aligned with ids, or None (not kept)

    @property
    def nbytes(self) -> int:
        held = (self.ids, self.logp, self.prompts) + (() if self.behav is None else (self.behav,))
        return sum(t.numel() * t.element_size() for t in held)


def _column(values: Sequence[Any], dtype: torch.dtype) -> Tensor:
    """(len(values),) tensor of Python numbers, ~3x faster than torch.tensor(values)."""
    if not values:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(array(_ARRAY_CODE[dtype], values), dtype=dtype)


def _pack(
    prompts: Sequence[Tensor], comps: Sequence[Tensor], logps: Sequence[Tensor], groups: Sequence[int],
    behavs: Sequence[Tensor | None],
) -> tuple[_Chunk, dict[str, Tensor]]:
    """Concatenate rollouts (given field by field) into one chunk; return it and their offset columns."""
    # map(Tensor.numel) runs in C (len() on a tensor is a Python method, ~7x slower); the
    # dims of the concatenation below confirm that every tensor was 1-D.
    numel = Tensor.numel
    c_len = list(map(numel, comps))
    if c_len != list(map(numel, logps)):
        raise ValueError("each rollout needs one old log-prob per completion token")
    kept = sum(map(is_not, behavs, repeat(None)))
    if kept not in (0, len(behavs)):  # a chunk holds them for all its rollouts or for none
        raise ValueError("rollouts added together must all carry behaviour_logprobs or none")
    if kept and c_len != list(map(numel, behavs)):  # type: ignore[arg-type]
        raise ValueError("each rollout needs one behaviour log-prob per completion token")
    # Prompt dedup: a group's prompt is stored once, taken from its first rollout.
    first: dict[int, int] = {}  # group_id -> index of its first rollout here
    src = [first.setdefault(g, i) for i, g in enumerate(groups)]
    # A shared group id promises a shared prompt; check it rather than silently train
    # a rollout on another rollout's prompt. One tensor object per group (as
    # make_rollouts gives) settles it in one C-level pass. Else contiguous tensors of one
    # dtype and length at one address hold the same tokens (rows of one prompt batch):
    # when that holds for every rollout, a few more passes settle it; otherwise
    # torch.equal compares the pairs it does not settle.
    heads_of = list(map(prompts.__getitem__, src))
    if not all(map(is_, prompts, heads_of)):
        ptr, num = list(map(Tensor.data_ptr, prompts)), list(map(Tensor.numel, prompts))
        same_memory = (all(map(eq, ptr, map(ptr.__getitem__, src))) and all(map(eq, num, map(num.__getitem__, src)))
                       and all(map(Tensor.is_contiguous, prompts)) and len(set(map(_dtype, prompts))) == 1)
        if not same_memory:
            pairs = [(p, h) for p, h in zip(prompts, heads_of) if p is not h]
            if not all(starmap(torch.equal, pairs)):
                raise ValueError("rollouts with the same group_id must have the same prompt_ids")
    # torch.cat copies, so the chunk owns compact storage even when the caller's
    # tensors are row views of a padded batch.
    ids = torch.cat(comps).detach().to("cpu", torch.int32)
    logp = torch.cat(logps).detach().to("cpu", torch.float32)
    if ids.dim() != 1 or logp.dim() != 1:
        raise ValueError("completion_ids and old_logprobs must be 1-D tensors, one value per completion token")
    heads = [prompts[j] for j in first.values()]
    head_len_list = list(map(Tensor.numel, heads))
    if 0 in head_len_list:  # an empty prompt has no position to score the first token from
        raise ValueError("prompt_ids must not be empty")
    flat_prompts = torch.cat(heads).to("cpu", torch.int32)
    head_len = _column(head_len_list, torch.int64)
    head_off = torch.cumsum(head_len, 0) - head_len
    # src holds each group's first index, so unique's sorted order is the heads' order.
    group = torch.unique(_column(src, torch.int64), return_inverse=True)[1]
    c_len_t = _column(c_len, torch.int64)
    cols = {
        "c_off": torch.cumsum(c_len_t, 0) - c_len_t,
        "c_len": c_len_t,
        "p_off": head_off[group],
        "p_len": head_len[group],
    }
    behav = torch.cat(behavs).detach().to("cpu", torch.float32) if kept else None  # type: ignore[arg-type]
    if behav is not None and behav.dim() != 1:
        raise ValueError("behaviour_logprobs must be 1-D tensors, one value per completion token")
    chunk = _Chunk(ids, logp, flat_prompts, live=len(comps), live_tokens=int(ids.numel()), behav=behav)
    return chunk, cols


class RolloutStore:
    """Slots of rollouts in insertion order, packed in chunks (see module docstring).

    extra: derived per-slot columns the owner fills after `append` (e.g. a sampling
    log-weight) and recomputes after `load_state_dict`; compacted with the others,
    not saved.
    """

    def __init__(self, extra: dict[str, torch.dtype] | None = None) -> None:
        self._dtypes = {**COLUMNS, **(extra or {})}
        self._clear()

    def _clear(self) -> None:
        self._cols = {k: torch.empty(0, dtype=d) for k, d in self._dtypes.items()}
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

    def append(self, rollouts: Sequence[Rollout]) -> int:
        """Store the rollouts in new slots at the end; return the first new slot."""
        start = self._n
        if not rollouts:
            return start
        k = len(rollouts)
        # One list comprehension per field (3x faster than one attrgetter pass and a
        # transpose): the only per-rollout Python work of an add.
        group = [r.group_id for r in rollouts]
        chunk, cols = _pack([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
                            [r.old_logprobs for r in rollouts], group, [r.behaviour_logprobs for r in rollouts])
        birth, prompt_id = [r.birth_step for r in rollouts], [r.prompt_id for r in rollouts]
        reuse, reward, adv = [r.reuse for r in rollouts], [r.reward for r in rollouts], [r.advantage for r in rollouts]
        ints = _column(birth + group + prompt_id + reuse, torch.int64).view(4, k)
        cols["birth"], cols["group"], cols["prompt_id"], cols["reuse"] = ints
        cols["reward"], cols["advantage"] = _column(reward + adv, torch.float64).view(2, k)
        self._reserve(start + k)
        for name, values in cols.items():
            self._cols[name][start : start + k] = values
        self._cols["alive"][start : start + k] = True
        self._cols["chunk"][start : start + k] = self._next_chunk
        self._chunks[self._next_chunk] = chunk
        self._next_chunk += 1
        self._n += k
        self._alive += k
        self._tokens += chunk.live_tokens
        return start

    def kill(self, mask: Tensor) -> int:
        """Remove the slots where the (num_slots,) bool `mask` is True; return how many were alive."""
        alive = self.col("alive")
        slots = (mask & alive).nonzero().squeeze(1)
        if slots.numel() == 0:
            return 0
        alive[slots] = False
        self._alive -= slots.numel()
        cids, inv, counts = torch.unique(self.col("chunk")[slots], return_inverse=True, return_counts=True)
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

    def _locate(self, slots: Tensor) -> tuple[Draw, list[list[int]]]:
        """Where the rollouts at `slots` are, and their (birth, prompt_id, group, reuse) columns as lists."""
        cols = self._cols
        ints = torch.stack([cols[k].index_select(0, slots) for k in _INT_COLUMNS])
        ints[2] += ints[1]  # completion end
        pkey = ints[0] << 32 | ints[3]  # (chunk, prompt offset) as one int: a group's prompt
        cid, c_start, c_end, p_off, p_len, *rest = ints.tolist()
        return Draw(list(map(self._chunks.__getitem__, cid)), pkey.tolist(), c_start, c_end, p_off, p_len), rest

    def rollouts(self, slots: Tensor) -> list[Rollout]:
        """Rollouts at `slots`, in that order: `StoredRollout`s, whose tensors are views of
        immutable chunks made on first read."""
        draw, (birth, prompt_id, group, reuse) = self._locate(slots)
        cols = self._cols
        reward, adv = torch.stack([cols[k].index_select(0, slots) for k in ("reward", "advantage")]).tolist()
        return records(draw, {"reward": reward, "advantage": adv, "birth_step": birth, "prompt_id": prompt_id,
                              "group_id": group, "reuse": reuse})

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
        draw, (_, _, group, _) = self._locate(slots)
        prompts, comps, logps, behavs = zip(*map(draw.tensors, range(len(group))))
        chunk, cols = _pack(prompts, comps, logps, group, behavs)
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
            if ch.behav is not None:
                tensors[f"chunk.{cid}.behav"] = ch.behav
        return tensors, {"chunks": sorted(self._chunks), "next_chunk": self._next_chunk}

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore; extra columns come back zero, for the owner to recompute."""
        self._clear()
        n = int(tensors["slot.birth"].numel())
        self._reserve(n)
        for k in COLUMNS:
            values = tensors[f"slot.{k}"] if k != "alive" else torch.ones(n, dtype=torch.bool)
            self._cols[k][:n] = values.to(COLUMNS[k])
        self._n = self._alive = n
        if bool((self.col("p_len") == 0).any()):  # append rejects them; a state saved before it did may hold one
            raise ValueError("buffer state holds a rollout with empty prompt_ids")
        self._tokens = int(self.col("c_len").sum())
        chunk_of = self.col("chunk")
        for cid in meta["chunks"]:
            in_chunk = chunk_of == cid
            self._chunks[cid] = _Chunk(
                ids=tensors[f"chunk.{cid}.ids"].to(torch.int32).contiguous(),
                logp=tensors[f"chunk.{cid}.logp"].to(torch.float32).contiguous(),
                prompts=tensors[f"chunk.{cid}.prompts"].to(torch.int32).contiguous(),
                live=int(in_chunk.sum()),
                live_tokens=int(self.col("c_len")[in_chunk].sum()),
                behav=behav.to(torch.float32).contiguous() if (behav := tensors.get(f"chunk.{cid}.behav")) is not None
                else None,
            )
        self._next_chunk = int(meta["next_chunk"])
