"""What a draw hands out: `StoredRollout` records whose tensors are read from the store on first access.

A sample of 512 rollouts makes 512 records and one `Draw` (the chunks and offsets they
read from), not ~1,500 tensor views besides. The first read of any tensor field of a
record (the update reads them all) makes its views (two, plus the group's prompt view
if no record of the group made it yet) and keeps them in its slots, so later reads are
plain slot reads: the views cost what they cost before, in the reader's time rather
than the buffer step's. Chunks are never written after they are built (storage.py), so a
record read after later adds, evictions or repacks still gets what it was added with.
"""
from __future__ import annotations

from collections import deque
from dataclasses import fields
from itertools import repeat
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

    def tensors(self, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(prompt_ids, completion_ids, old_logprobs, behaviour_logprobs) of draw position i: views."""
        ch, s, e = self.chunks[i], self.c_start[i], self.c_end[i]
        prompt = self.prompts.get(self.pkey[i])
        if prompt is None:
            prompt = self.prompts[self.pkey[i]] = ch.prompts[self.p_off[i]: self.p_off[i] + self.p_len[i]]
        return prompt, ch.ids[s:e], ch.logp[s:e], None if ch.behav is None else ch.behav[s:e]


_TENSOR_FIELDS = ("prompt_ids", "completion_ids", "old_logprobs", "behaviour_logprobs")
_SCALAR_FIELDS = ("reward", "advantage", "birth_step", "prompt_id", "group_id", "reuse")
_set = object.__setattr__
_get = object.__getattribute__


class StoredRollout(Rollout):
    """A `Rollout` handed out by the store: scalars set, tensors read from its chunk when first
    accessed. Behaves as a `Rollout` (fields, `replace`, `num_tokens`); copies and pickles are
    plain `Rollout`s holding the views, not the chunks.

    Every field is a slot. The tensor slots stay empty until a tensor field is first read;
    Python then falls back to `__getattr__`, which fills all four at once (one fallback per
    record). Assigning a tensor field fills the others first, so no later read overwrites
    it. Until it is filled a record holds its draw, and so every chunk the draw touched;
    after, only its own views.
    """

    __slots__ = (*_TENSOR_FIELDS, *_SCALAR_FIELDS, "_draw", "_i")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """An ordinary record with every field given (what `dataclasses.replace` makes)."""
        _set(self, "_draw", None)
        super().__init__(*args, **kwargs)

    def _fill(self) -> None:
        t = self._draw.tensors(self._i)
        _set(self, "prompt_ids", t[0])
        _set(self, "completion_ids", t[1])
        _set(self, "old_logprobs", t[2])
        _set(self, "behaviour_logprobs", t[3])
        _set(self, "_draw", None)

    def __getattr__(self, name: str) -> Any:
        # Reached only for an empty slot or an unknown name.
        if name not in _TENSOR_FIELDS or self._draw is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self._fill()
        return _get(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _TENSOR_FIELDS and self._draw is not None:
            self._fill()
        _set(self, name, value)

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return Rollout, tuple(getattr(self, f.name) for f in fields(Rollout))


def _check_rollout_fields() -> None:
    """A field added to Rollout must be stored and set here too: fail loudly rather than hand out
    records that lack it."""
    names = {f.name for f in fields(Rollout)}
    if names != {*_TENSOR_FIELDS, *_SCALAR_FIELDS}:
        raise ImportError(f"replay/drawn.py makes StoredRollout records from {_TENSOR_FIELDS + _SCALAR_FIELDS}; "
                          f"records.Rollout has {sorted(names)}: update StoredRollout and records()")


_check_rollout_fields()
# The slots' own setters: C-level stores that bypass StoredRollout.__setattr__.
_SETTERS = {name: StoredRollout.__dict__[name].__set__ for name in (*_SCALAR_FIELDS, "_draw", "_i")}


def records(draw: Draw, columns: dict[str, list[Any]]) -> list[Rollout]:
    """One record per draw position, its scalar fields from `columns` (name -> list), tensors unread.

    Made with C-level loops (`map` over the slots' setters): no Python call per record.
    """
    n = len(draw.chunks)
    out: list[Rollout] = list(map(object.__new__, repeat(StoredRollout, n)))
    for name, values in (*columns.items(), ("_draw", repeat(draw, n)), ("_i", range(n))):
        deque(map(_SETTERS[name], out, values), maxlen=0)
    return out
