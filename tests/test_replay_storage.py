"""The packed store under the buffers: what it keeps per rollout, and its prompt check."""
from __future__ import annotations

import gc

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
