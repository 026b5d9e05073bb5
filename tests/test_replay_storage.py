"""The packed store under the buffers: what it keeps per rollout, and its prompt check."""
from __future__ import annotations

import copy
import gc
import pickle
from dataclasses import replace

import pytest
import torch

from replaygrpo.records import Rollout
from replaygrpo.replay import NaiveReplayBuffer, ReplayBuffer
from replaygrpo.replay.buffer import BaseReplayBuffer


def _batch(step: int, groups: int, size: int, prompts: torch.Tensor) -> list[Rollout]:
    """groups x size rollouts whose tensors are row views of batch tensors, as an engine gives."""
    ids = torch.arange(groups * size * 3, dtype=torch.int32).view(groups * size, 3)
    return [Rollout(prompt_ids=prompts[i // size], completion_ids=ids[i], old_logprobs=-ids[i].float(),
                    reward=1.0, advantage=1.0 + i, birth_step=step, prompt_id=i, group_id=1000 * step + i // size)
            for i in range(groups * size)]


def _tensors_held(buf: BaseReplayBuffer) -> int:
    """Tensor objects reachable from the buffer (not through a tensor)."""
    seen, todo, n = set(), [buf], 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, type(gc))):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            n += 1
            continue
        todo += gc.get_referents(obj)
    return n


@pytest.mark.parametrize("naive", [False, True])
def test_store_keeps_no_object_per_rollout_or_group(naive: bool) -> None:
    """Held tensors grow with the add calls (one chunk each), not with what they hold."""
    prompts = torch.arange(40 * 5, dtype=torch.int32).view(40, 5)
    counts = []
    for groups in (2, 40):
        buf: BaseReplayBuffer = NaiveReplayBuffer(10_000) if naive else ReplayBuffer(tau_max=None)
        for step in range(3):
            buf.add(_batch(step, groups, 8, prompts))
        assert len(buf) == 3 * groups * 8
        counts.append(_tensors_held(buf))
    assert counts[0] == counts[1]


def test_shared_memory_is_not_taken_for_a_shared_prompt() -> None:
    """Two prompt views at one address but with other strides or length hold other tokens."""
    base = torch.arange(16, dtype=torch.int32).view(4, 4)
    rows = _batch(0, 1, 3, base)
    for other in (base[:, 0], base[0, :3], base[0].view(torch.float32)):
        assert other.data_ptr() == rows[0].prompt_ids.data_ptr()
        rows[2].prompt_ids = other
        with pytest.raises(ValueError, match="same prompt"):
            ReplayBuffer(tau_max=None).add(rows)
    rows[2].prompt_ids = base[0].clone()  # equal tokens elsewhere in memory: fine
    assert ReplayBuffer(tau_max=None).add(rows) == 3


def _filled(groups: int = 40, size: int = 8) -> ReplayBuffer:
    prompts = torch.arange(groups * 5, dtype=torch.int32).view(groups, 5)
    buf = ReplayBuffer(tau_max=None)
    for step in range(3):
        buf.add(_batch(step, groups, size, prompts))
    return buf


def test_a_draw_makes_about_one_object_per_rollout() -> None:
    """The records a sample returns are the only per-rollout objects it makes: their tensor
    views wait for the first read (what the garbage collector scans stays small)."""
    buf, gen = _filled(), torch.Generator().manual_seed(0)
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]  # tracked objects allocated minus freed, while none is collected
        out = buf.sample(400, 3, gen)
        made = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert len(out) == 400 and made < 1.2 * len(out), made


def test_drawn_records_read_their_tensors_on_first_access() -> None:
    """Drawn records behave as Rollouts: fields read lazily hold what was added, one group's
    rollouts share one prompt view, an assigned field is kept, copies are plain Rollouts."""
    buf, gen = _filled(), torch.Generator().manual_seed(1)
    out = buf.sample(300, 3, gen)
    ids = torch.arange(40 * 8 * 3, dtype=torch.int32).view(40 * 8, 3)
    for r in out:
        assert isinstance(r, Rollout) and r.behaviour_logprobs is None
        assert torch.equal(r.completion_ids, ids[r.prompt_id])
        assert torch.equal(r.old_logprobs, -ids[r.prompt_id].float())
        assert r.prompt_ids.tolist() == list(range(5 * (r.prompt_id // 8), 5 * (r.prompt_id // 8) + 5))
        assert r.num_tokens == 3 and r.advantage == 1.0 + r.prompt_id
    by_group: dict[int, Rollout] = {}
    for r in out:  # 300 of 320 drawn: groups repeat
        assert by_group.setdefault(r.group_id, r).prompt_ids is r.prompt_ids
    assert len(by_group) < len(out)
    fresh = buf.sample(2, 4, gen)
    fresh[0].old_logprobs = torch.zeros(3)  # assigned before any other field is read
    assert torch.equal(fresh[0].completion_ids, ids[fresh[0].prompt_id])
    assert torch.equal(fresh[0].old_logprobs, torch.zeros(3))
    for twin in (copy.copy(fresh[1]), copy.deepcopy(fresh[1]), pickle.loads(pickle.dumps(fresh[1]))):
        assert type(twin) is Rollout and torch.equal(twin.completion_ids, fresh[1].completion_ids)
    moved = replace(fresh[1], advantage=-2.0)
    assert moved.advantage == -2.0 and torch.equal(moved.prompt_ids, fresh[1].prompt_ids)
    with pytest.raises(AttributeError, match="no_such_field"):
        fresh[1].no_such_field


def test_completion_tensors_must_be_1d() -> None:
    """One value per token: (1, C) rows are refused rather than stored as a 2-D chunk."""
    prompts = torch.arange(10, dtype=torch.int32).view(2, 5)
    rows = _batch(0, 2, 2, prompts)
    flat = [replace(r, completion_ids=r.completion_ids[None], old_logprobs=r.old_logprobs[None]) for r in rows]
    with pytest.raises(ValueError, match="1-D"):
        ReplayBuffer(tau_max=None).add(flat)
