"""The buffer draws exactly what it drew before its storage was packed.

EXPECTED holds, for fixed seeds and a fixed sequence of adds, evictions and samples,
the rollouts each `sample` returned (by the unique id kept in `prompt_id`), recorded
from the buffer as it was before the packed rewrite (commit 7963b10). A change to how
slots are ordered, compacted, weighted or drawn changes these lists; a change to how
the drawn rollouts are handed out does not.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from replaygrpo.records import Rollout
from replaygrpo.replay import NaiveReplayBuffer, ReplayBuffer
from replaygrpo.replay.buffer import BaseReplayBuffer

GROUP_SIZES = [3, 5, 8, 1, 6, 4]


def _group(advantages: list[float], prompt: torch.Tensor, uid: int, step: int, group_id: int) -> list[Rollout]:
    """One group's rollouts, numbered from `uid` (kept in `prompt_id`); each one's completion
    ids and old log-probs are derived from its number, so a drawn rollout can be checked."""
    out = []
    for a in advantages:
        n = 1 + uid % 4
        out.append(Rollout(prompt_ids=prompt, completion_ids=torch.full((n,), uid, dtype=torch.int32),
                           old_logprobs=torch.full((n,), -uid / 8), reward=float(a > 0), advantage=a,
                           birth_step=step, prompt_id=uid, group_id=group_id))
        uid += 1
    return out


def _step_rollouts(step: int, uid: int, gen: torch.Generator) -> list[Rollout]:
    """Three groups of varying size; some advantages 0 (not stored by the paper's buffer)."""
    out = []
    for j in range(3):
        size = GROUP_SIZES[(step + j) % len(GROUP_SIZES)]
        adv = torch.randn(size, generator=gen, dtype=torch.float64)
        adv[torch.rand(size, generator=gen) < 0.2] = 0.0
        prompt = torch.full((2 + j,), 7 * step + j, dtype=torch.int32)
        out += _group(adv.tolist(), prompt, uid + len(out), step, 3 * step + j)
    return out


def _run(make: Any, steps: int = 14, n: int = 6, reload_at: int = 7) -> list[list[int]]:
    """Drawn ids per step; the buffer goes through a state_dict round trip at `reload_at`."""
    buf: BaseReplayBuffer = make()
    data_gen, draw_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(5)
    uid, drawn = 0, []
    for step in range(steps):
        if step == reload_at:
            tensors, meta = buf.state_dict()
            buf = make()
            buf.load_state_dict(load(save(tensors)), json.loads(json.dumps(meta)))
        fresh = _step_rollouts(step, uid, data_gen)
        uid += len(fresh)
        buf.evict(step)  # the loop's order: evict, sample, then add
        out = buf.sample(n, step, draw_gen)
        for r in out:  # what is handed out is what was added under that id
            assert r.completion_ids.tolist() == [r.prompt_id] * (1 + r.prompt_id % 4)
            assert torch.equal(r.old_logprobs, torch.full((1 + r.prompt_id % 4,), -r.prompt_id / 8))
            assert r.prompt_ids.tolist() == [7 * r.birth_step + r.group_id % 3] * (2 + r.group_id % 3)
        drawn.append([r.prompt_id for r in out])
        buf.add(fresh)
    return drawn


CASES = {
    "rollout_alpha0": lambda: ReplayBuffer(tau_max=3, alpha=0.0),
    "rollout_alpha1": lambda: ReplayBuffer(tau_max=3, alpha=1.0),
    "rollout_alpha1_reuse1": lambda: ReplayBuffer(tau_max=4, alpha=1.0, max_reuse=1),
    "rollout_no_age_reuse2": lambda: ReplayBuffer(tau_max=None, alpha=2.0, max_reuse=2),
    "group_alpha0": lambda: ReplayBuffer(tau_max=3, alpha=0.0, unit="group"),
    "group_alpha1_reuse1": lambda: ReplayBuffer(tau_max=3, alpha=1.0, max_reuse=1, unit="group"),
    "naive": lambda: NaiveReplayBuffer(capacity=30),
}

EXPECTED: dict[str, list[list[int]]] = {
    "group_alpha0": [
        [], [3, 4, 5, 6, 7, 9], [22, 23, 24, 25, 26, 27], [30, 32, 33, 35, 36, 37], [29, 23, 24, 25, 26, 27],
        [62, 63, 64, 65, 56, 59], [52, 53, 55, 69, 70, 72], [89, 90, 91, 92, 93, 96], [81, 83, 76, 77, 79, 80],
        [89, 90, 91, 92, 94, 96], [102, 105, 106, 107, 108, 109], [143, 144, 145, 146, 137, 140],
        [143, 144, 145, 146, 129, 132], [150, 152, 153, 143, 144, 146],
    ],
    "group_alpha1_reuse1": [
        [], [3, 4, 5, 6, 7, 1], [29, 22, 24, 25, 26, 27], [38, 39, 41, 42, 43, 44], [45, 30, 33, 35, 36, 37],
        [52, 53, 55, 66, 67, 51], [46, 47, 49, 50, 75, 62], [89, 91, 92, 93, 94, 96],
        [110, 84, 86, 87, 88, 77], [102, 104, 106, 107, 108, 109], [127, 129, 130, 131, 132, 124],
        [112, 114, 115, 116, 117, 118], [154, 155, 133, 134, 135, 161], [162, 164, 148, 149, 150, 152],
    ],
    "naive": [
        [], [3, 4, 5, 6, 7, 9], [16, 17, 18, 19, 20, 13], [29, 22, 23, 25, 26, 28], [52, 53, 54, 55, 38, 47],
        [56, 57, 58, 59, 60, 61], [69, 70, 71, 72, 56, 61], [81, 82, 83, 73, 74, 75], [81, 82, 83, 90, 91, 94],
        [110, 119, 98, 99, 100, 101], [120, 121, 122, 123, 124, 125], [126, 127, 129, 130, 131, 132],
        [143, 144, 145, 146, 137, 138], [162, 163, 164, 150, 151, 153],
    ],
    "rollout_alpha0": [
        [], [9, 3, 5, 4, 13, 8], [8, 9, 22, 13, 19, 0], [35, 42, 10, 19, 43, 1], [37, 19, 38, 23, 44, 42],
        [38, 60, 63, 32, 65, 46], [47, 60, 62, 45, 67, 57], [84, 79, 83, 88, 63, 70],
        [96, 70, 80, 76, 108, 81], [89, 114, 104, 102, 97, 86], [130, 106, 109, 124, 100, 111],
        [125, 115, 139, 144, 124, 140], [158, 133, 140, 160, 129, 126], [143, 146, 157, 162, 176, 159],
    ],
    "rollout_alpha1": [
        [], [6, 1, 3, 2, 12, 5], [6, 8, 9, 22, 15, 20], [37, 42, 10, 20, 43, 1], [38, 19, 39, 20, 45, 43],
        [39, 56, 61, 35, 64, 45], [46, 57, 61, 45, 71, 55], [80, 77, 84, 63, 72, 76],
        [98, 71, 77, 76, 109, 80], [92, 116, 106, 102, 86, 108], [127, 106, 108, 123, 98, 109],
        [124, 116, 138, 145, 139, 133], [157, 134, 141, 160, 127, 126], [145, 149, 157, 162, 176, 159],
    ],
    "rollout_alpha1_reuse1": [
        [], [6, 1, 3, 2, 12, 5], [16, 19, 25, 20, 22, 0], [41, 43, 26, 30, 44, 9], [42, 14, 27, 47, 24, 46],
        [36, 60, 61, 29, 67, 49], [37, 53, 56, 33, 72, 52], [81, 77, 80, 84, 55, 71],
        [102, 62, 76, 109, 86, 89], [96, 117, 107, 106, 92, 110], [131, 104, 112, 125, 94, 114],
        [123, 108, 137, 143, 139, 132], [157, 127, 134, 160, 116, 111], [145, 149, 158, 165, 176, 161],
    ],
    "rollout_no_age_reuse2": [
        [], [5, 1, 9, 3, 2, 0], [3, 1, 16, 26, 22, 27], [29, 23, 37, 26, 5, 2], [41, 19, 51, 38, 29, 20],
        [51, 37, 43, 30, 35, 16], [27, 23, 42, 76, 67, 53], [61, 42, 55, 19, 67, 9],
        [72, 104, 84, 102, 44, 98], [25, 72, 45, 109, 47, 61], [70, 76, 98, 20, 86, 43],
        [123, 84, 47, 115, 107, 134], [116, 55, 143, 53, 52, 77], [116, 77, 81, 33, 134, 41],
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_draws_as_before(case: str) -> None:
    assert _run(CASES[case]) == EXPECTED[case]


def test_same_draws_as_before_at_scale() -> None:
    """100 stored groups of 8 and draws of 64: the CDF-with-rejection path of the draw."""
    buf = ReplayBuffer(tau_max=None, alpha=1.0)
    gen = torch.Generator().manual_seed(3)
    uid = 0
    for step in range(4):
        batch: list[Rollout] = []
        for g in range(25):
            adv = torch.randn(8, generator=gen, dtype=torch.float64).tolist()
            batch += _group(adv, torch.tensor([g + 1], dtype=torch.int32), uid + len(batch), step, 25 * step + g)
        uid += len(batch)
        buf.add(batch)
    drawn = [[r.prompt_id for r in buf.sample(64, 4, gen)] for _ in range(3)]
    assert drawn == EXPECTED_AT_SCALE


EXPECTED_AT_SCALE: list[list[int]] = [
    [
        342, 284, 161, 550, 529, 34, 471, 366, 477, 190, 327, 736, 792, 436, 596, 21, 674, 250, 745, 346, 478,
        267, 650, 221, 179, 312, 253, 671, 189, 415, 536, 751, 71, 744, 263, 10, 73, 421, 297, 126, 291, 89,
        46, 538, 166, 28, 707, 340, 480, 385, 313, 515, 447, 645, 690, 17, 573, 698, 554, 476, 618, 350, 316,
        667,
    ],
    [
        722, 327, 238, 306, 556, 297, 286, 295, 125, 621, 591, 413, 611, 515, 546, 454, 385, 397, 344, 110,
        381, 103, 37, 197, 706, 249, 153, 780, 265, 343, 738, 565, 497, 649, 752, 477, 95, 655, 437, 608, 736,
        245, 126, 745, 320, 192, 711, 331, 143, 150, 469, 624, 12, 664, 309, 421, 453, 639, 525, 402, 562, 751,
        311, 499,
    ],
    [
        508, 732, 90, 103, 668, 541, 748, 389, 767, 45, 716, 275, 213, 287, 373, 444, 537, 442, 485, 454, 8,
        159, 17, 294, 683, 745, 137, 259, 150, 28, 11, 338, 9, 320, 26, 797, 762, 556, 690, 612, 522, 127, 686,
        474, 280, 380, 193, 505, 237, 329, 356, 35, 260, 695, 347, 482, 513, 118, 529, 473, 331, 533, 135, 20,
    ],
]
