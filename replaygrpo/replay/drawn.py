"""What a draw hands out: `StoredRollout` records whose tensors are read from the store on first access.

A sample of 512 rollouts makes 512 records and one `Draw` (the chunks and offsets they
read from), not ~1,500 tensor views besides: a view is made when its field is first read
(the update reads them all), then kept in the record's slot, so later reads are plain
slot reads. Chunks are never written after they are built (storage.py), so a record read
after later adds, evictions or repacks still gets what it was added with.
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
_READERS = {name: getattr(Draw, name) for name in _TENSOR_FIELDS}


class StoredRollout(Rollout):
    """A `Rollout` handed out by the store: scalars set, each tensor field read from its chunk
    when first accessed. Behaves as a `Rollout` (fields, `replace`, `num_tokens`); copies and
    pickles are plain `Rollout`s holding the views, not the chunks.

    Every field is a slot, so the record has no per-instance dict; a tensor slot is empty
    until first read, and only then does Python fall back to `__getattr__`, which fills it.
    Assigning a field sets its slot, as on a `Rollout`, and is never overwritten by a read.
    """

    __slots__ = (*_TENSOR_FIELDS, *_SCALAR_FIELDS, "_draw", "_i")

    def __getattr__(self, name: str) -> Any:
        read = _READERS.get(name)
        if read is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = read(self._draw, self._i)
        setattr(self, name, value)
        return value

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
