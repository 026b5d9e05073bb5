"""Replay buffers and batch composition, tested alone (DESIGN steps 4-7).

Every rollout made here carries a unique id in `prompt_id`, and tensors derived from
that id, so a returned rollout can be traced back and its contents checked.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import replace
from typing import Callable

import pytest
import torch
from torch import Tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load, load_file, save, save_file

from replaygrpo.replay import (
    BaseReplayBuffer,
    NaiveReplayBuffer,
    ReplayBuffer,
    compose_batch,
    num_replay,
)
from replaygrpo.replay.sampling import draw, segment_ids
from replaygrpo.records import Rollout

FLOOR = 1e-6
ADVANTAGES = [0.0, 0.0, 1e-3, 0.5, -0.5, 1.0, -1.5, 2.0]


def _make(uid: int, birth: int, group: int, adv: float, prompt: torch.Tensor) -> Rollout:
    c = 1 + uid % 5  # lengths 1..5
    return Rollout(
        prompt_ids=prompt,
        completion_ids=torch.arange(c, dtype=torch.int32) + 100 * uid,
        old_logprobs=-(torch.arange(c, dtype=torch.float32) + uid) / 7,
        reward=float(adv > 0),
        advantage=adv,
        birth_step=birth,
        prompt_id=uid,
        group_id=group,
    )


class Maker:
    """Fresh rollouts with unique ids and group ids."""

    def __init__(self) -> None:
        self.uid = 0
        self.gid = 0

    def group(self, birth: int, advs: list[float]) -> list[Rollout]:
        g, self.gid = self.gid, self.gid + 1
        prompt = torch.arange(2 + g % 3, dtype=torch.int32) + 1000 * g
        self.uid += len(advs)
        return [_make(self.uid - len(advs) + i, birth, g, a, prompt) for i, a in enumerate(advs)]


def _check_contents(r: Rollout) -> None:
    """A returned rollout still holds exactly what was added under its id."""
    uid, g = r.prompt_id, r.group_id
    c = 1 + uid % 5
    assert r.completion_ids.dtype == torch.int32 and r.old_logprobs.dtype == torch.float32
    assert torch.equal(r.completion_ids, torch.arange(c, dtype=torch.int32) + 100 * uid)
    assert torch.equal(r.old_logprobs, -(torch.arange(c, dtype=torch.float32) + uid) / 7)
    assert torch.equal(r.prompt_ids, torch.arange(2 + g % 3, dtype=torch.int32) + 1000 * g)


def _weights(advs: list[float], alpha: float) -> list[float]:
    w = [(abs(a) + FLOOR) ** alpha for a in advs]
    return [x / sum(w) for x in w]


# ---------------------------------------------------------------- hand-written cases


def test_age_bound_example() -> None:
    """tau_max=2, one rollout born at each step 0..5: at step 5 only births 3, 4 replay."""
    mk, buf = Maker(), ReplayBuffer(tau_max=2)
    for s in range(6):
        buf.add(mk.group(s, [1.0]))
    g = torch.Generator().manual_seed(0)
    assert sorted(r.birth_step for r in buf.sample(10, 5, g)) == [3, 4]  # 5 is "now"
    assert buf.num_eligible(5) == 2
    assert buf.evict(5) == 3 and len(buf) == 3
    assert buf.ages(5).tolist() == [2, 1, 0]


def test_long_run_keeps_storage_bounded() -> None:
    """Add/evict for many steps: slots are compacted and dead chunks freed."""
    mk, buf = Maker(), ReplayBuffer(tau_max=3, alpha=0.5)
    g = torch.Generator().manual_seed(0)
    for s in range(200):
        buf.add(mk.group(s, [1.0, -0.5, 0.0, 2.0]) + mk.group(s, [0.25, -0.25]))
        buf.evict(s)
        out = buf.sample(4, s, g)
        assert all(0 < s - r.birth_step <= 3 for r in out)
        for r in out:
            _check_contents(r)
    assert len(buf) == 4 * 5  # births 196..199 (step 199), 5 stored per step
    assert buf._store.num_slots <= 2 * len(buf) + 64 and len(buf._store._chunks) == 4


def test_zero_advantage_never_stored() -> None:
    mk, buf = Maker(), ReplayBuffer(tau_max=None)
    assert buf.add(mk.group(0, [0.0, 1.0, 0.0, -1.0])) == 2
    assert buf.add(mk.group(0, [0.0, 0.0])) == 0
    assert len(buf) == 2
    assert {r.advantage for r in buf.sample(10, 1, torch.Generator())} == {1.0, -1.0}


def test_max_reuse() -> None:
    mk, buf = Maker(), ReplayBuffer(tau_max=None, max_reuse=2)
    buf.add(mk.group(0, [1.0]))
    g = torch.Generator().manual_seed(0)
    assert [r.reuse for r in buf.sample(1, 1, g)] == [1]  # the count after this draw
    assert [r.reuse for r in buf.sample(1, 2, g)] == [2]
    assert buf.sample(1, 3, g) == [] and len(buf) == 1  # used up, not yet evicted
    assert buf.evict(3) == 1 and len(buf) == 0


def test_storage_is_compact_and_views_survive_repacking() -> None:
    mk, buf = Maker(), ReplayBuffer(tau_max=None, max_reuse=1)
    for s in range(32):  # 32 groups of 8, 500 tokens each, prompts shared per group
        long = dict(completion_ids=torch.zeros(500, dtype=torch.int32), old_logprobs=torch.zeros(500))
        buf.add([replace(r, **long) for r in mk.group(s, [1.0] * 8)])
    assert buf.num_tokens == 256 * 500
    assert 8.0 < buf.nbytes / buf.num_tokens < 8.25
    # Use up most rollouts of every chunk: chunks get rebuilt, slots compacted, and
    # tensors handed out earlier must not change.
    mk2, small = Maker(), ReplayBuffer(tau_max=None, max_reuse=1)
    small.add([r for s in range(4) for r in mk2.group(0, [1.0] * 6)])
    g = torch.Generator().manual_seed(1)
    taken = small.sample(20, 1, g)
    before = small.nbytes
    assert small.evict(1) == 20 and len(small) == 4
    assert small.nbytes < before
    for r in taken + small.sample(4, 2, g):
        _check_contents(r)


def test_handed_out_rollouts_never_change() -> None:
    """What `sample` returns are views of the store: no later add, evict, repack or
    compaction may change them, and they hold exactly the tokens and log-probs given to
    `add`, bit for bit, even though the caller refills the same batch tensors every step."""
    gen = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(tau_max=3, alpha=1.0, max_reuse=1)
    ids = torch.zeros(16, 40, dtype=torch.int32)  # an engine's batch tensors, reused
    logp = torch.zeros(16, 40)
    prompts = torch.zeros(4, 6, dtype=torch.int32)
    added: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # uid -> copies of what was added
    held: list[tuple[int, Rollout]] = []  # (step drawn, rollout)
    calls = {"_repack": 0, "_compact": 0}
    store = buf._store
    for name in calls:  # count the rebuilds this test must go through
        def spy(*a: object, _f: Callable[..., None] = getattr(store, name), _n: str = name) -> None:
            calls[_n] += 1
            _f(*a)
        setattr(store, name, spy)
    for step in range(40):
        ids.random_(0, 2**31 - 1, generator=gen)
        logp.normal_(generator=gen)
        prompts.random_(0, 1000, generator=gen)
        batch = []
        for i in range(16):
            uid, n = 16 * step + i, 1 + (7 * step + 3 * i) % 40
            adv = float(torch.randn(1, generator=gen))
            batch.append(Rollout(prompt_ids=prompts[i // 4], completion_ids=ids[i, :n], old_logprobs=logp[i, :n],
                                 reward=float(adv > 0), advantage=adv, birth_step=step, prompt_id=uid,
                                 group_id=4 * step + i // 4))
            added[uid] = (prompts[i // 4].clone(), ids[i, :n].clone(), logp[i, :n].clone())
        buf.evict(step)  # the loop's order: evict, sample, train, then add
        held += [(step, r) for r in buf.sample(10, step, gen)]
        buf.add(batch)
        for drawn, r in held:  # every rollout handed out so far, this step's included
            p, c, lp = added[r.prompt_id]
            assert torch.equal(r.prompt_ids, p) and torch.equal(r.completion_ids, c)
            assert torch.equal(r.old_logprobs.view(torch.int32), lp.view(torch.int32))  # bit for bit
            assert r.birth_step < drawn
    assert calls["_repack"] > 0 and calls["_compact"] > 0 and len(held) > 300, (calls, len(held))


def test_invalid_input() -> None:
    mk, buf = Maker(), ReplayBuffer(tau_max=None)
    bad = mk.group(0, [1.0, 1.0])
    bad[1] = replace(bad[1], prompt_ids=bad[1].prompt_ids + 1)
    with pytest.raises(ValueError, match="same prompt"):
        buf.add(bad)
    bad[1] = replace(bad[1], prompt_ids=bad[1].prompt_ids[:-1])  # a different length too
    with pytest.raises(ValueError, match="same prompt"):
        buf.add(bad)
    assert len(buf) == 0
    with pytest.raises(ValueError, match="finite"):
        buf.add(mk.group(0, [math.nan]))
    r = mk.group(0, [1.0])[0]
    with pytest.raises(ValueError, match="log-prob"):
        buf.add([replace(r, old_logprobs=torch.zeros(99))])
    with pytest.raises(ValueError):
        ReplayBuffer(tau_max=-1)
    with pytest.raises(ValueError, match="empty"):
        buf.add([replace(r, prompt_ids=r.prompt_ids[:0])])
    # Equal prompts in distinct tensors are fine (and stored once), and so are distinct
    # views of one row of a prompt batch.
    ok = mk.group(0, [1.0, 1.0])
    ok[1] = replace(ok[1], prompt_ids=ok[1].prompt_ids.clone())
    assert buf.add(ok) == 2
    rows = torch.arange(12, dtype=torch.int32).view(3, 4)
    assert buf.add([replace(r, prompt_ids=rows[1], group_id=99) for r in mk.group(0, [1.0, -1.0, 2.0])]) == 3
    out = [r for r in buf.sample(10, 1, torch.Generator()) if r.group_id == 99]
    assert len(out) == 3 and all(r.prompt_ids.tolist() == [4, 5, 6, 7] for r in out)


# ---------------------------------------------------------------- model-based property test


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_buffer_matches_reference_model(data: st.DataObject) -> None:
    tau = data.draw(st.none() | st.integers(0, 4), "tau_max")
    alpha = data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 8.0]), "alpha")
    max_reuse = data.draw(st.none() | st.integers(1, 3), "max_reuse")
    unit = data.draw(st.sampled_from(["rollout", "group"]), "unit")
    buf = ReplayBuffer(tau, alpha=alpha, max_reuse=max_reuse, unit=unit)
    mk, g = Maker(), torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    model: dict[int, Rollout] = {}  # uid -> rollout as added; reuse tracked in `reuse`
    reuse: dict[int, int] = {}
    handed_out: list[Rollout] = []
    step = 0

    def eligible(uid: int) -> bool:
        age = step - model[uid].birth_step
        return (age > 0 and (tau is None or age <= tau)
                and (max_reuse is None or reuse[uid] < max_reuse))

    ops = data.draw(st.lists(st.sampled_from(["add", "evict", "sample", "advance"]), max_size=30))
    for op in ops:
        if op == "add":
            advs = st.lists(st.sampled_from(ADVANTAGES), min_size=1, max_size=5)
            batch = [r for _ in range(data.draw(st.integers(1, 3))) for r in mk.group(step, data.draw(advs))]
            kept = [r for r in batch if r.advantage != 0]
            assert buf.add(batch) == len(kept)
            model.update({r.prompt_id: r for r in kept})
            reuse.update({r.prompt_id: 0 for r in kept})
        elif op == "evict":
            gone = [u for u, r in model.items()
                    if (tau is not None and step - r.birth_step > tau)
                    or (max_reuse is not None and reuse[u] >= max_reuse)]
            assert buf.evict(step) == len(gone)
            for u in gone:
                del model[u], reuse[u]
        elif op == "sample":
            n = data.draw(st.integers(0, 10))
            ok = {u for u in model if eligible(u)}
            out = buf.sample(n, step, g)
            uids = [r.prompt_id for r in out]
            assert len(out) == min(n, len(ok))
            assert len(set(uids)) == len(uids)  # no duplicates within a draw
            assert set(uids) <= ok  # born before now, young enough, not used up
            for r in out:
                assert r.birth_step < step and (tau is None or step - r.birth_step <= tau)
                assert r.advantage == model[r.prompt_id].advantage != 0
                reuse[r.prompt_id] += 1
                assert r.reuse == reuse[r.prompt_id]
            if unit == "group":  # whole groups, contiguous; only the last may be cut
                groups = [k for k, _ in itertools.groupby(r.group_id for r in out)]
                assert len(groups) == len(set(groups))
                for gid in groups[:-1]:
                    members = {u for u in ok if model[u].group_id == gid}
                    assert {u for u in uids if model[u].group_id == gid} == members
            handed_out += out
        else:
            step += data.draw(st.integers(1, 3))
        assert len(buf) == len(model)
        assert buf.num_tokens == sum(r.num_tokens for r in model.values())
        assert buf.num_eligible(step) == sum(eligible(u) for u in model)
    for r in handed_out:  # earlier draws are untouched by later evictions and repacks
        _check_contents(r)


# ---------------------------------------------------------------- sampling distribution

N_DRAWS = 2000
# 6 sigma of a binomial proportion at p = 1/2 over N_DRAWS draws (0.067): a false
# alarm is ~1e-9 per cell, while the bugs checked below move some cell by > 2 * TOL.
TOL = 6 * math.sqrt(0.25 / N_DRAWS)


def _first_pick_freq(
    buf: BaseReplayBuffer, n: int, n_keys: int, key: Callable[[Rollout], int]
) -> list[float]:
    """Frequency of each key among the first rollout of N_DRAWS draws of n."""
    g = torch.Generator().manual_seed(1234)
    counts = [0] * n_keys
    for _ in range(N_DRAWS):
        counts[key(buf.sample(n, 1, g)[0])] += 1
    return [c / N_DRAWS for c in counts]


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("n", [1, 3])  # n=1: CDF draws with rejection; n=3 of 5: Gumbel-top-k
def test_first_pick_is_proportional_to_priority(alpha: float, n: int) -> None:
    advs = [-2.0, -1.0, 0.5, 1.0, 3.0]
    mk, buf = Maker(), ReplayBuffer(tau_max=None, alpha=alpha)
    buf.add(mk.group(0, advs))
    freq = _first_pick_freq(buf, n, len(advs), lambda r: r.prompt_id)
    expected = _weights(advs, alpha)
    assert max(abs(f - e) for f, e in zip(freq, expected)) < TOL
    # The test has power: sampling ∝ max(A, 0) or ignoring alpha would fail it.
    signed = [max(a, 0) for a in advs]
    assert max(abs(e - s / sum(signed)) for e, s in zip(expected, signed)) > 2 * TOL
    if alpha != 1.0:
        assert max(abs(e - w) for e, w in zip(expected, _weights(advs, 1.0))) > 2 * TOL


@settings(max_examples=4, deadline=None)
@given(advs=st.lists(st.sampled_from([-3.0, -1.0, -0.2, 0.1, 0.7, 2.0]), min_size=2, max_size=6),
       alpha=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
def test_first_pick_distribution_property(advs: list[float], alpha: float) -> None:
    mk, buf = Maker(), ReplayBuffer(tau_max=None, alpha=alpha)
    buf.add(mk.group(0, advs))
    freq = _first_pick_freq(buf, 1, len(advs), lambda r: r.prompt_id)
    assert max(abs(f - e) for f, e in zip(freq, _weights(advs, alpha))) < TOL


@settings(max_examples=60, deadline=None)
@given(log_w=st.lists(st.floats(-30, 30), min_size=1, max_size=80), data=st.data())
def test_draw_returns_k_distinct_indices(log_w: list[float], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(log_w)))
    d = draw(torch.tensor(log_w, dtype=torch.float64), k, torch.Generator().manual_seed(k))
    assert len(d) == k and len(set(d.tolist())) == k and all(0 <= i < len(log_w) for i in d.tolist())


@settings(max_examples=80, deadline=None)
@given(log_w=st.lists(st.floats(-30, 30), min_size=1, max_size=60), data=st.data())
def test_draw_ignores_masked_entries(log_w: list[float], data: st.DataObject) -> None:
    """-inf entries are never drawn and change nothing: the same draw, and the same
    generator state after it, as with those entries removed (what `sample` relies on
    to draw over every slot yet match a compacted, reloaded buffer)."""
    w = torch.tensor(log_w, dtype=torch.float64)
    keep = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(log_w), max_size=len(log_w))))
    k = data.draw(st.integers(0, int(keep.sum())))
    g_full, g_skip, g_kept = (torch.Generator().manual_seed(k) for _ in range(3))
    kept = keep.nonzero().squeeze(1)[draw(w[keep], k, g_kept)]
    for full in (draw(w.masked_fill(~keep, -math.inf), k, g_full), draw(w, k, g_skip, skip=~keep)):
        assert full.tolist() == kept.tolist()
    assert torch.equal(g_full.get_state(), g_kept.get_state())
    assert torch.equal(g_skip.get_state(), g_kept.get_state())


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 4), max_size=8))
def test_segment_ids_matches_repeat_interleave(lengths: list[int]) -> None:
    t = torch.tensor(lengths, dtype=torch.int64)
    assert torch.equal(segment_ids(t), torch.repeat_interleave(torch.arange(len(lengths)), t))


@pytest.mark.parametrize("k", [2, 3])
def test_draw_order_is_successive_sampling(k: int) -> None:
    """Joint law of the first two picks, including the fallback when one weight dominates."""
    w = torch.tensor([200.0, 1.0, 1.0, 2.0, 4.0, 1.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    counts: dict[tuple[int, int], int] = {}
    for _ in range(N_DRAWS):
        d = draw(w.log(), k, g).tolist()
        assert len(set(d)) == k
        counts[(d[0], d[1])] = counts.get((d[0], d[1]), 0) + 1
    p = (w / w.sum()).tolist()
    for i, j in itertools.permutations(range(6), 2):
        exact = p[i] * p[j] / (1 - p[i])
        assert abs(counts.get((i, j), 0) / N_DRAWS - exact) < TOL


def test_group_unit_picks_groups_by_mean_priority() -> None:
    groups = [[3.0], [1.0, -1.0, 0.5], [0.2, 2.0]]
    mk, buf = Maker(), ReplayBuffer(tau_max=None, alpha=1.0, unit="group")
    for advs in groups:
        buf.add(mk.group(0, advs))
    freq = _first_pick_freq(buf, 1, 6, lambda r: r.prompt_id)
    means = [sum(abs(a) + FLOOR for a in grp) / len(grp) for grp in groups]
    expected = [means[gi] / sum(means) * (abs(a) + FLOOR) / sum(abs(b) + FLOOR for b in grp)
                for gi, grp in enumerate(groups) for a in grp]
    assert max(abs(f - e) for f, e in zip(freq, expected)) < TOL


@pytest.mark.parametrize("naive", [False, True])
def test_group_split_across_adds_is_one_unit(naive: bool) -> None:
    mk = Maker()
    buf: BaseReplayBuffer = NaiveReplayBuffer(100) if naive else ReplayBuffer(None, unit="group")
    g0 = mk.group(0, [1.0, -1.0, 2.0, 0.5, -0.5])
    buf.add(g0[:2])
    buf.add(mk.group(0, [1.0, 1.0, -1.0]))
    buf.add(g0[2:])  # the rest of group 0 arrives later, after group 1
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        out = buf.sample(5, 1, g)
        groups = [k for k, _ in itertools.groupby(r.group_id for r in out)]
        assert len(groups) == len(set(groups))  # each group contiguous in the draw
        if groups[0] == 0:
            assert sorted(r.prompt_id for r in out) == [r.prompt_id for r in g0]
        seen.add(groups[0])
    assert seen == {0, 1}


# ---------------------------------------------------------------- naive baseline


def test_naive_fifo_whole_groups() -> None:
    mk, buf = Maker(), NaiveReplayBuffer(capacity=8)
    assert buf.add(mk.group(0, [0.0, 0.0, 0.0, 0.0])) == 0  # all-zero group skipped
    for s in range(3):
        assert buf.add(mk.group(s, [1.0, 0.0, -1.0, 0.5])) == 4  # zeros kept in a group
    assert len(buf) == 8  # the oldest group went first
    g = torch.Generator().manual_seed(0)
    out = buf.sample(8, 3, g)
    assert sorted({r.group_id for r in out}) == [2, 3] and len(out) == 8
    four = buf.sample(4, 3, g)  # exactly one whole group
    assert len({r.group_id for r in four}) == 1 and len(four) == 4
    three = buf.sample(3, 3, g)  # the last group is cut to fit n
    assert len({r.group_id for r in three}) == 1 and len(three) == 3
    assert {r.group_id for r in buf.sample(8, 2, g)} == {2}  # only born before step
    assert buf.evict(100) == 0 and len(buf) == 8  # no age bound


def test_naive_sampling_is_uniform_over_groups() -> None:
    mk, buf = Maker(), NaiveReplayBuffer(capacity=100)
    for advs in ([5.0, -5.0], [0.1, 0.1, -0.1, 0.1], [1.0] * 6):
        buf.add(mk.group(0, advs))
    freq = _first_pick_freq(buf, 1, 3, lambda r: r.group_id)
    assert max(abs(f - 1 / 3) for f in freq) < TOL


# ---------------------------------------------------------------- composition


def test_num_replay_rounds_half_up() -> None:
    cases = [(5, 0.5, 3), (4, 0.5, 2), (8, 0.3, 2), (3, 0.0, 0), (3, 2.0, 6)]
    assert [num_replay(n, ratio) for n, ratio, _ in cases] == [r for _, _, r in cases]


@settings(max_examples=60, deadline=None)
@given(n_fresh=st.integers(0, 12), n_stored=st.integers(0, 12),
       ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 3.0]), anchor=st.booleans(),
       naive=st.booleans())
def test_compose_batch(n_fresh: int, n_stored: int, ratio: float, anchor: bool, naive: bool) -> None:
    mk = Maker()
    buf: BaseReplayBuffer = NaiveReplayBuffer(1000) if naive else ReplayBuffer(tau_max=3)
    for _ in range(n_stored):
        buf.add(mk.group(4, [1.0]))
    fresh = [r for _ in range(n_fresh) for r in mk.group(5, [0.5])]
    g = torch.Generator().manual_seed(n_fresh)
    used, replayed = compose_batch(fresh, buf, 5, ratio, anchor, g)
    r = num_replay(n_fresh, ratio)
    assert all(x.birth_step == 4 for x in replayed)
    if anchor:  # every fresh rollout, plus R replayed when enough are eligible
        assert used == fresh
        assert len(replayed) == min(r, n_stored)
    else:  # replay displaces fresh ones; the batch size stays len(fresh)
        assert len(used) + len(replayed) == n_fresh
        assert len(replayed) == min(r, n_stored, n_fresh)
        ids = [x.prompt_id for x in used]
        assert ids == sorted(ids) and set(ids) <= {x.prompt_id for x in fresh}


# ---------------------------------------------------------------- checkpoint round trip


def _roundtrip(buf: BaseReplayBuffer) -> BaseReplayBuffer:
    tensors, meta = buf.state_dict()
    tensors, meta = load(save(tensors)), json.loads(json.dumps(meta))
    return type(buf).from_state_dict(tensors, meta)


def _same(a: list[Rollout], b: list[Rollout]) -> None:
    assert [r.prompt_id for r in a] == [r.prompt_id for r in b]
    for x, y in zip(a, b):
        assert x.reuse == y.reuse and x.birth_step == y.birth_step and x.advantage == y.advantage
        for t in ("prompt_ids", "completion_ids", "old_logprobs"):
            assert torch.equal(getattr(x, t), getattr(y, t))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_state_dict_round_trip_reproduces_sampling(data: st.DataObject) -> None:
    if data.draw(st.booleans(), "naive"):
        buf: BaseReplayBuffer = NaiveReplayBuffer(capacity=data.draw(st.integers(1, 20)))
    else:
        buf = ReplayBuffer(
            data.draw(st.none() | st.integers(0, 3)),
            alpha=data.draw(st.sampled_from([0.0, 1.0, 2.0])),
            max_reuse=data.draw(st.none() | st.integers(1, 3)),
            unit=data.draw(st.sampled_from(["rollout", "group"])),
        )
    mk, g = Maker(), torch.Generator().manual_seed(3)

    def churn(b: BaseReplayBuffer, step: int, gen: torch.Generator, mk: Maker) -> list[Rollout]:
        b.add(mk.group(step, [1.0, -0.5, 0.0, 2.0]))
        b.add(mk.group(step, [0.3, -0.3]))
        b.evict(step)
        return b.sample(5, step, gen)

    for s in range(data.draw(st.integers(0, 8))):
        churn(buf, s, g, mk)
    restored = _roundtrip(buf)
    assert len(restored) == len(buf) and restored.num_tokens == buf.num_tokens
    g2 = torch.Generator().set_state(g.get_state())
    mk2 = copy.copy(mk)
    for s in range(8, 14):
        _same(churn(buf, s, g, mk), churn(restored, s, g2, mk2))


def test_state_dict_through_files(tmp_path) -> None:
    mk, buf = Maker(), ReplayBuffer(tau_max=5, alpha=0.5, max_reuse=3, unit="group")
    for s in range(4):
        buf.add(mk.group(s, [1.0, -1.0, 0.5]))
    buf.sample(3, 4, torch.Generator().manual_seed(0))
    tensors, meta = buf.state_dict()
    save_file(tensors, tmp_path / "buffer.safetensors")
    (tmp_path / "buffer.json").write_text(json.dumps(meta))
    restored = ReplayBuffer(tau_max=5, alpha=0.5, max_reuse=3, unit="group")
    meta = json.loads((tmp_path / "buffer.json").read_text())
    restored.load_state_dict(load_file(tmp_path / "buffer.safetensors"), meta)
    seed = torch.Generator().manual_seed
    _same(buf.sample(6, 5, seed(9)), restored.sample(6, 5, seed(9)))
    with pytest.raises(ValueError, match="naive"):
        NaiveReplayBuffer(4).load_state_dict(tensors, meta)
