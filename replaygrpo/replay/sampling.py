"""Prioritised sampling without replacement (DESIGN step 7): which slots to draw.

Pure functions of weight tensors and a generator; the buffers decide what is
eligible and what the weights are.

Sampling without replacement is successive sampling (pick one ∝ weight, remove it,
repeat), vectorised: draws with replacement whose repeats are rejected, or the
Gumbel-top-k trick (Efraimidis & Spirakis 2006); both give exactly that law. Weights
are handled in log space, so a large exponent cannot underflow every weight to zero.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


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


def gumbel_topk(log_w: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Indices of k draws without replacement, P ∝ exp(log_w), in draw order."""
    # key_i = log w_i - log E_i with E_i ~ Exp(1): the largest key is picked with
    # probability w_i / sum(w), and so on down (successive sampling).
    u = torch.rand(log_w.shape, dtype=torch.float64, generator=generator)
    keys = log_w - torch.log(-torch.log1p(-u))  # E = -log(1 - U), U ~ U[0, 1)
    return torch.topk(keys, k).indices


def draw(
    log_w: Tensor, k: int, generator: torch.Generator, skip: Tensor | None = None, w: Tensor | None = None
) -> Tensor:
    """Indices of k draws without replacement, P ∝ exp(log_w), in draw order.

    skip: (len(log_w),) bool, entries never drawn (default: those at -inf); at least
    k must be left. They change nothing else: the draw and the generator state after
    it are those without them, so a buffer can skip its ineligible slots rather than
    gather the eligible ones, and draw what a compacted (reloaded) copy draws.
    w: exp(log_w - c) for a constant c, 0 where skipped, if the caller has it.

    Same distribution as `gumbel_topk` (successive sampling), cheaper when k is
    small against the number left: draw with replacement from the CDF and keep
    first occurrences. A repeat is a rejection, and "draw ∝ w, reject the taken
    ones" is exactly "draw ∝ w among the rest". Falls back to Gumbel-top-k on what
    is left when repeats pile up (a few heavy weights, or k near the number left).
    """
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    keep = log_w > -math.inf if skip is None else ~skip
    m = int(keep.sum())
    if 2 * k > m:
        if m == log_w.numel():
            return gumbel_topk(log_w, k, generator)
        idx = keep.nonzero().squeeze(1)
        return idx[gumbel_topk(log_w[idx], k, generator)]
    # Skipped entries weigh exactly 0, and adding 0 leaves a sum unchanged, so the CDF
    # takes the same values at the kept entries as without the skipped ones.
    cdf = torch.cumsum(w, 0) if w is not None else None
    if cdf is None or not float(cdf[-1]) > 1e-200:  # none given, or c so large that w underflows
        top = log_w.masked_fill(~keep, -math.inf).max()
        cdf = torch.cumsum((log_w - top).exp().masked_fill_(~keep, 0.0), 0)
    total = cdf[-1:]
    last = int(torch.searchsorted(cdf, total))  # the last entry that adds mass
    taken = torch.zeros(log_w.numel(), dtype=torch.bool)
    out: list[Tensor] = []
    got = 0
    for _ in range(4):
        need = k - got
        u = torch.rand(need + need // 4 + 8, dtype=torch.float64, generator=generator)
        cand = torch.searchsorted(cdf, u * total, right=True).clamp_(max=last)
        # Keep the first occurrence of each candidate not taken in earlier rounds.
        uniq, inv = torch.unique(cand, return_inverse=True)
        pos = torch.arange(cand.numel())
        first = torch.full((uniq.numel(),), cand.numel()).scatter_reduce(0, inv, pos, "amin")
        new = cand[(first[inv] == pos) & ~taken[cand]][:need]
        taken[new] = True
        out.append(new)
        got += new.numel()
        if got == k:
            return torch.cat(out)
    # Gumbel-top-k over the kept entries (taken ones masked), as without the skipped ones.
    idx = keep.nonzero().squeeze(1)
    rest = log_w[idx].masked_fill(taken[idx], -math.inf)
    out.append(idx[gumbel_topk(rest, k - got, generator)])
    return torch.cat(out)


def draw_groups(
    slots: Tensor, groups: Tensor, log_w: Tensor, k: int, generator: torch.Generator
) -> Tensor:
    """k slots taken as whole groups, groups drawn ∝ mean(w), the last one truncated.

    slots, groups, log_w: (M,) eligible slots, their group ids, their log-weights.
    """
    # Arrange members group by group, insertion order inside. Rollouts of a group
    # usually arrive together, so each group is one run and no sort is needed.
    runs, run_len = torch.unique_consecutive(groups, return_counts=True)
    if torch.unique(runs).numel() == runs.numel():
        members, count = torch.arange(groups.numel()), run_len
    else:
        members = torch.argsort(groups, stable=True)
        count = torch.unique_consecutive(groups[members], return_counts=True)[1]
    inv = segment_ids(count)  # group of members[i]
    lw = log_w[members]
    # log(mean w) per group, stable: log-sum-exp around the group's max.
    top = torch.full((count.numel(),), -math.inf, dtype=torch.float64)
    top = top.scatter_reduce(0, inv, lw, "amax")
    total = torch.zeros_like(top).index_add_(0, inv, (lw - top[inv]).exp())
    log_mean = top + total.log() - count.log()
    # Every group has >= 1 member, so k groups always suffice.
    order = draw(log_mean, min(k, count.numel()), generator)
    start = torch.cumsum(count, 0) - count
    taken: list[Tensor] = []
    need = k
    for s, c in zip(start[order].tolist(), count[order].tolist()):
        m = members[s : s + c]
        if c > need:  # last group: keep `need` members, drawn by the same priority
            m = m[gumbel_topk(log_w[m], need, generator).sort().values]
        taken.append(m)
        need -= m.numel()
        if need == 0:
            break
    return slots[torch.cat(taken)]
