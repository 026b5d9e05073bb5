"""What a draw hands out: `StoredRollout` records whose tensors are read from the store on first access.

A sample of 512 rollouts makes 512 records and one `Draw` (the chunks and offsets they
read from), not ~1,500 tensor views besides. The first read of a record's tensor field
(the update reads them all) makes its views, ~3 and a dict to keep them in, so later
reads are plain attribute reads: the views cost what they cost before, but in the reader's
time, not the buffer step's. Chunks are never written after they are built (storage.py),
so a record read after later adds, evictions or repacks still gets what it was added with.
"""
from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from torch import Tensor

from replaygrpo.records import Rollout

if TYPE_CHECKING:
    from replaygrpo.replay.storage import _Chunk


class Draw:
    """Where the tensors of one draw's rollouts are: their chunks and offsets (lists by draw position)."""

    __slots__ = ("chunks", "pkey", "c_start", "c_end", "p_off", "p_len", "prompts")

    def __init__(self, chunks: list[_Chunk], pkey: list[int], c_start: list[int], c_end: list[int],
                 p_off: list[int], p_len: list[int]) -> None:
        self.chunks, self.pkey, self.c_start, self.c_end = chunks, pkey, c_start, c_end  # pkey: one int per prompt
        self.p_off, self.p_len = p_off, p_len
        self.prompts: dict[int, Tensor] = {}  # pkey -> one view per group, shared by its rollouts

    # One reader per tensor field, named after it, each a view of the chunk.
    def prompt_ids(self, i: int) -> Tensor:
        prompt = self.prompts.get(self.pkey[i])
        if prompt is None:
            prompt = self.prompts[self.pkey[i]] = self.chunks[i].prompts[self.p_off[i]: self.p_off[i] + self.p_len[i]]
        return prompt

    def completion_ids(self, i: int) -> Tensor:
        return self.chunks[i].ids[self.c_start[i]: self.c_end[i]]

    def old_logprobs(self, i: int) -> Tensor:
        return self.chunks[i].logp[self.c_start[i]: self.c_end[i]]

    def behaviour_logprobs(self, i: int) -> Tensor | None:
        behav = self.chunks[i].behav
        return None if behav is None else behav[self.c_start[i]: self.c_end[i]]

    def tensors(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(prompt_ids, completion_ids, old_logprobs, behaviour_logprobs) of draw position i: views."""
        return self.prompt_ids(i), self.completion_ids(i), self.old_logprobs(i), self.behaviour_logprobs(i)


_TENSOR_FIELDS = ("prompt_ids", "completion_ids", "old_logprobs", "behaviour_logprobs")
_SCALAR_FIELDS = ("reward", "advantage", "birth_step", "prompt_id", "group_id", "reuse")
_READERS = tuple((name, getattr(Draw, name)) for name in _TENSOR_FIELDS)


class _ReadOnFirstAccess:
    """A tensor field of `StoredRollout`. The first read of any of the four fills all of those
    not yet in the record's dict with views of its chunk (one call per record, not per field);
    a field assigned before that stays as assigned. A non-data descriptor, so later reads find
    the dict entry first and cost a plain attribute read."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: StoredRollout | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        d, draw, i = obj.__dict__, obj._draw, obj._i
        for name, read in _READERS:
            if name not in d:
                d[name] = read(draw, i)
        obj._draw = None  # filled: hold only its own views, not every chunk of the draw
        return d[self.name]


class StoredRollout(Rollout):
    """A `Rollout` handed out by the store: scalars set, tensors read from its chunk when first
    accessed. Behaves as a `Rollout` (fields, `replace`, `num_tokens`); copies and pickles are
    plain `Rollout`s holding the views, not the chunks. Until its first read a record holds
    its draw, and so every chunk the draw touched; after it, only its own views."""

    __slots__ = (*_SCALAR_FIELDS, "_draw", "_i")
    prompt_ids = _ReadOnFirstAccess()  # type: ignore[assignment]
    completion_ids = _ReadOnFirstAccess()  # type: ignore[assignment]
    old_logprobs = _ReadOnFirstAccess()  # type: ignore[assignment]
    behaviour_logprobs = _ReadOnFirstAccess()  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return Rollout, tuple(getattr(self, f.name) for f in fields(Rollout))


def _check_rollout_fields() -> None:
    """A field added to Rollout must be stored and set here too: fail loudly rather than hand out
    records that lack it."""
    names = {f.name for f in fields(Rollout)}
    if names != {*_TENSOR_FIELDS, *_SCALAR_FIELDS}:
        raise ImportError(f"replay/drawn.py makes StoredRollout records from {_TENSOR_FIELDS + _SCALAR_FIELDS}; "
                          f"records.Rollout has {sorted(names)}: update StoredRollout and record()")


_check_rollout_fields()
_new = object.__new__


def record(draw: Draw, i: int, reward: float, advantage: float, birth: int, prompt_id: int, group: int,
           reuse: int) -> StoredRollout:
    """Draw position i's record, tensors unread (slot stores: cheaper than a dataclass __init__)."""
    r = _new(StoredRollout)
    r.reward = reward
    r.advantage = advantage
    r.birth_step = birth
    r.prompt_id = prompt_id
    r.group_id = group
    r.reuse = reuse
    r._draw = draw
    r._i = i
    return r
