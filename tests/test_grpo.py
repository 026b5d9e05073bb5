"""Hand-computed cases and loop-vs-vectorised checks for replaygrpo.grpo."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from replaygrpo.grpo import (
    aggregate,
    group_advantages,
    policy_loss,
    sequence_logprobs_from_hidden,
    token_logprobs,
)

EPS = 1e-6

# ----------------------------------------------------------------------------- advantages


def test_advantages_by_hand() -> None:
    # Groups: g7 = [1,0,0,1], g3 = [1,1,1,1], g5 = [0,1], interleaved and unsorted ids.
    # g7: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.5773503
    #     -> A = +-0.5 / (0.5773503 + 1e-6) = +-0.8660239
    # g3: all equal -> exactly 0
    # g5: mean 0.5, unbiased var = 2 * 0.25 / 1 = 0.5, std = 0.7071068
    #     -> A = +-0.5 / (0.7071068 + 1e-6) = +-0.7071058
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    ids = torch.tensor([7, 3, 5, 7, 5, 7, 3, 7, 3, 3])
    a7 = 0.5 / (math.sqrt(1 / 3) + EPS)
    a5 = 0.5 / (math.sqrt(0.5) + EPS)
    assert a7 == pytest.approx(0.8660239, abs=1e-7) and a5 == pytest.approx(0.7071058, abs=1e-7)
    expected_std = torch.tensor([a7, 0, -a5, -a7, a5, -a7, 0, a7, 0, 0])
    torch.testing.assert_close(group_advantages(rewards, ids, "std", EPS), expected_std)
    # Dr. GRPO: no division, just the centred reward.
    expected_none = torch.tensor([0.5, 0, -0.5, -0.5, 0.5, -0.5, 0, 0.5, 0, 0])
    torch.testing.assert_close(group_advantages(rewards, ids, "none"), expected_none)


def test_advantages_constant_groups_are_exactly_zero() -> None:
    # 0.1 * 3 / 3 != 0.1 in floating point; the constant group must still give 0.0 exactly.
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 2.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 2])  # groups 1 and 2 have size 1
    for scale in ("std", "none"):
        adv = group_advantages(rewards, ids, scale)
        assert adv.dtype == torch.float64
        assert torch.equal(adv, torch.zeros(5, dtype=torch.float64))


def test_advantages_unknown_scale_lists_names() -> None:
    with pytest.raises(ValueError, match=r"'none', 'std'"):
        group_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), "bogus")


def _advantages_loop(rewards: torch.Tensor, ids: torch.Tensor, scale: str) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for g in ids.unique():
        sel = ids == g
        r = rewards[sel]
        if r.numel() < 2 or bool((r == r[0]).all()):
            continue
        a = r - r.mean()
        out[sel] = a / (r.std() + EPS) if scale == "std" else a
    return out


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    seed=st.integers(0, 2**31 - 1),
    binary=st.booleans(),
)
def test_advantages_loop_equals_vectorised(sizes: list[int], seed: int, binary: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    ids = torch.repeat_interleave(torch.arange(len(sizes)) * 37 + 11, torch.tensor(sizes))
    ids = ids[torch.randperm(n, generator=g)]  # ragged groups in any order
    rewards = (torch.randint(0, 2, (n,), generator=g).double() if binary
               else torch.randn(n, generator=g, dtype=torch.float64))
    for scale in ("std", "none"):
        torch.testing.assert_close(group_advantages(rewards, ids, scale, EPS),
                                   _advantages_loop(rewards, ids, scale))


# ----------------------------------------------------------------------------- aggregation

# Per-token values with ragged lengths 4, 2, 1; padding holds garbage that must not leak.
VALUES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, float("nan")], [7.0, -50.0, 0.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("agg", "norm_len", "expected"),
    [
        ("token_mean", None, (10 + 11 + 7) / 7),  # = 4
        ("seq_mean_token_mean", None, (10 / 4 + 11 / 2 + 7 / 1) / 3),  # = 5
        ("seq_mean_token_sum", None, (10 + 11 + 7) / 3),  # = 28/3
        ("seq_mean_token_sum", 4, (10 + 11 + 7) / 3 / 4),  # = 7/3
    ],
)
def test_aggregations_by_hand(agg: str, norm_len: int | None, expected: float) -> None:
    assert aggregate(VALUES, MASK, agg, norm_len).item() == pytest.approx(expected)
    assert aggregate(VALUES, MASK.float(), agg, norm_len).item() == pytest.approx(expected)


def test_aggregation_errors() -> None:
    with pytest.raises(ValueError, match="seq_mean_token_sum"):
        aggregate(VALUES, MASK, "token_mean", norm_len=4)
    with pytest.raises(ValueError, match=r"valid: \['seq_mean_token_mean'"):
        aggregate(VALUES, MASK, "sum")


def test_policy_loss_aggregations_ragged() -> None:
    # At ratio 1 the per-token loss is -A_b, so row b contributes -A_b * len_b.
    adv = torch.tensor([1.0, -2.0, 3.0])
    logp = torch.randn(3, 4)
    lens = torch.tensor([4.0, 2.0, 1.0])
    cases = {
        "token_mean": (-(1 * 4) + 2 * 2 - 3 * 1) / 7,  # -3/7
        "seq_mean_token_mean": (-1 + 2 - 3) / 3,  # -2/3
        "seq_mean_token_sum": (-4 + 4 - 3) / 3,  # -1
    }
    for agg, expected in cases.items():
        loss, m = policy_loss(logp, logp, adv, MASK, agg=agg)
        assert loss.item() == pytest.approx(expected)
        torch.testing.assert_close(m["seq_tokens"], lens)


# ----------------------------------------------------------------------------- policy loss


def test_ratio_one_gradient_is_policy_gradient() -> None:
    # At ratio 1 nothing is clipped and d loss / d logp[b,t] = -A_b / n_tokens on valid tokens.
    torch.manual_seed(0)
    logp = torch.randn(3, 4, requires_grad=True)
    adv = torch.tensor([0.5, -1.5, 2.0])
    loss, m = policy_loss(logp, logp.detach(), adv, MASK)
    loss.backward()
    expected = -adv[:, None] * MASK.float() / MASK.sum()
    torch.testing.assert_close(logp.grad, expected)
    assert loss.item() == pytest.approx(-(0.5 * 4 - 1.5 * 2 + 2.0 * 1) / 7)
    assert m["clip_fraction"].item() == 0.0 and m["ratio_mean"].item() == pytest.approx(1.0)


def test_ratio_one_gradient_through_a_model() -> None:
    # Same check on parameters: grad = -(1/n) sum_{b,t valid} A_b * grad logp[b,t].
    torch.manual_seed(1)
    model = torch.nn.Linear(5, 11)
    x, tokens = torch.randn(3, 4, 5), torch.randint(0, 11, (3, 4))
    adv = torch.tensor([1.0, -0.5, 0.25])

    def logps() -> torch.Tensor:
        return token_logprobs(model(x), tokens)

    lp = logps()
    loss, _ = policy_loss(lp, lp.detach(), adv, MASK)
    got = torch.autograd.grad(loss, list(model.parameters()))
    n = MASK.sum()
    manual = [torch.zeros_like(p) for p in model.parameters()]
    for b in range(3):
        for t in range(4):
            if MASK[b, t]:
                grads = torch.autograd.grad(logps()[b, t], list(model.parameters()))
                for acc, gr in zip(manual, grads):
                    acc -= adv[b] * gr / n
    for a, e in zip(got, manual):
        torch.testing.assert_close(a, e)


def test_clipping_by_hand() -> None:
    # logp = 0, old_logp = -log(r) so the ratio is r exactly. Clip range [0.8, 1.28].
    # Row 0, A=+1, r = [1.5, 1.1, 0.5, 1.0]: token losses -1.28 (clipped: 1.5 > 1.28),
    #     -1.1, -0.5 (r < 0.8 with A > 0: min keeps r itself, unclipped), -1.0.
    # Row 1, A=-1, r = [0.5, 0.9, 1.5, pad]: 0.8 (clipped: 0.5 < 0.8), 0.9,
    #     1.5 (r > 1.28 with A < 0: unclipped); the padded ratio 7 must not count.
    # token_mean = (-1.28 - 1.1 - 0.5 - 1.0 + 0.8 + 0.9 + 1.5) / 7 = -0.68 / 7
    r = torch.tensor([[1.5, 1.1, 0.5, 1.0], [0.5, 0.9, 1.5, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    logp = torch.zeros(2, 4, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    loss, m = policy_loss(logp, -r.log(), adv, mask, clip_low=0.2, clip_high=0.28)
    expected = (-1.28 - 1.1 - 0.5 - 1.0 + 0.8 + 0.9 + 1.5) / 7
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # Unclipped tokens: d(-A r)/d logp = -A r / n; clipped and padded tokens: exactly 0.
    expected_grad = torch.tensor([[0.0, -1.1, -0.5, -1.0], [0.0, 0.9, 1.5, 0.0]]) / 7
    torch.testing.assert_close(logp.grad, expected_grad)
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[1, 0].item() == 0.0
    assert m["clip_fraction"].item() == pytest.approx(2 / 7)
    torch.testing.assert_close(m["seq_clip_count"], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(m["seq_ratio_sum"], torch.tensor([4.1, 2.9]))
    assert m["ratio_mean"].item() == pytest.approx(7.0 / 7)
    assert all(not v.requires_grad for v in m.values())


def test_kl_k3_by_hand() -> None:
    # k3 = exp(d) - d - 1 with d = ref - logp. logp = 0:
    # d = log 2   -> 2 - 0.6931472 - 1 = 0.3068528
    # d = log 0.5 -> 0.5 + 0.6931472 - 1 = 0.1931472
    # d = 0       -> 0
    logp = torch.zeros(1, 3, requires_grad=True)
    ref = torch.tensor([[math.log(2), math.log(0.5), 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv = torch.tensor([1.0])
    loss, m = policy_loss(logp, logp.detach(), adv, mask, ref_logp=ref, kl_coef=0.1)
    kl = (0.3068528 + 0.1931472 + 0.0) / 3
    assert m["kl"].item() == pytest.approx(kl, abs=1e-6)
    assert loss.item() == pytest.approx(-1.0 + 0.1 * kl, abs=1e-6)
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): [-1, 0.5, 0]; pg part: -A / 3.
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3 - 0.1 / 3, -1 / 3 + 0.05 / 3, -1 / 3]]))
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp.detach(), adv, mask, kl_coef=0.1)


def test_truncated_importance_sampling_by_hand() -> None:
    # w = min(exp(old - behaviour), cap=3): exp(log 2) = 2, exp(log 0.5) = 0.5, exp(log 4) = 4 -> 3.
    # At ratio 1 with A = 2 the token losses are -2 * w = [-4, -1, -6], token_mean = -11/3.
    logp = torch.zeros(1, 3, requires_grad=True)
    old = torch.zeros(1, 3)
    behaviour = -torch.tensor([[math.log(2), math.log(0.5), math.log(4)]])
    mask = torch.ones(1, 3)
    loss, m = policy_loss(logp, old, torch.tensor([2.0]), mask, tis_cap=3.0, behaviour_logp=behaviour)
    assert loss.item() == pytest.approx(-11 / 3)
    assert m["tis_weight_mean"].item() == pytest.approx(5.5 / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-4.0, -1.0, -6.0]]) / 3)
    # No cap: plain importance weights [2, 0.5, 4].
    loss, _ = policy_loss(logp, old, torch.tensor([2.0]), mask, behaviour_logp=behaviour)
    assert loss.item() == pytest.approx(-2 * 6.5 / 3)


def test_padding_garbage_does_not_leak() -> None:
    logp = torch.tensor([[-1.0, float("nan")], [-2.0, 1e6]], requires_grad=True)
    old = torch.tensor([[-1.0, -3.0], [-2.0, -1e6]])
    mask = torch.tensor([[1, 0], [1, 0]])
    loss, m = policy_loss(logp, old, torch.tensor([1.0, 1.0]), mask, ref_logp=old, kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert logp.grad[:, 1].abs().sum().item() == 0.0


# ----------------------------------------------------------------------------- log-probs


def _naive(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, targets[..., None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 14, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_chunked_equals_naive(chunk_size: int, temperature: float) -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 7, 33, dtype=torch.float64, requires_grad=True)  # N = 14
    targets = torch.randint(0, 33, (2, 7))
    upstream = torch.randn(2, 7, dtype=torch.float64)
    ref = _naive(logits.double(), targets, temperature).double()
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), logits)
    got = token_logprobs(logits, targets, temperature, chunk_size)
    assert got.dtype == torch.float32 and got.shape == (2, 7)
    (g_got,) = torch.autograd.grad((got * upstream).sum(), logits)
    torch.testing.assert_close(got, ref.float())
    torch.testing.assert_close(g_got, g_ref, atol=1e-6, rtol=1e-5)


def test_token_logprobs_float32_and_bf16_match_naive() -> None:
    torch.manual_seed(3)
    for dtype, atol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        logits = torch.randn(3, 5, 50).to(dtype).requires_grad_()
        targets = torch.randint(0, 50, (3, 5))
        ref = _naive(logits, targets, 0.9)
        (g_ref,) = torch.autograd.grad(ref.sum(), logits)
        got = token_logprobs(logits, targets, 0.9, chunk_size=4)
        (g_got,) = torch.autograd.grad(got.sum(), logits)
        torch.testing.assert_close(got, ref)
        assert g_got.dtype == dtype
        torch.testing.assert_close(g_got.float(), g_ref.float(), atol=atol, rtol=1e-2)


def test_temperature_scaling() -> None:
    # Two-way vocabulary: logits [0, log 3] at T = 1 give p = [1/4, 3/4];
    # at T = 0.5 they are [0, 2 log 3] -> p = [1/10, 9/10]; at T = 2, [0, log 3 / 2] ->
    # p = [1 / (1 + sqrt 3), sqrt 3 / (1 + sqrt 3)].
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    targets = torch.tensor([[0, 1]])
    for chunk in (None, 1):
        torch.testing.assert_close(token_logprobs(logits, targets, 1.0, chunk).exp(), torch.tensor([[0.25, 0.75]]))
        torch.testing.assert_close(token_logprobs(logits, targets, 0.5, chunk).exp(), torch.tensor([[0.1, 0.9]]))
        s = math.sqrt(3)
        torch.testing.assert_close(
            token_logprobs(logits, targets, 2.0, chunk).exp(), torch.tensor([[1 / (1 + s), s / (1 + s)]])
        )


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 64])
def test_logprobs_from_hidden_equals_naive(chunk_size: int) -> None:
    torch.manual_seed(4)
    n, h, v = 13, 6, 40
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    upstream = torch.randn(n, dtype=torch.float64)
    ref = torch.log_softmax(hidden @ weight.T / 0.8, -1).gather(-1, targets[:, None]).squeeze(-1)
    g_ref = torch.autograd.grad((ref * upstream).sum(), (hidden, weight))
    got = sequence_logprobs_from_hidden(hidden, weight, targets, 0.8, chunk_size)
    g_got = torch.autograd.grad((got.double() * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(got, ref.float())
    for a, e in zip(g_got, g_ref):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs_from_hidden(hidden, weight, targets, 0.8, chunk_size), got.detach())


def test_logprobs_from_hidden_saves_no_full_logits() -> None:
    # Record every tensor autograd saves for backward outside checkpointed regions: the
    # naive path saves (N,V) logits; the chunked path must save nothing of that size.
    n, h, v, chunk = 64, 8, 500, 16
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))

    def max_saved(fn) -> int:
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn().sum().backward()
        return max(sizes)

    assert max_saved(lambda: torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None])) >= n * v
    assert max_saved(lambda: sequence_logprobs_from_hidden(hidden, weight, targets, 1.0, chunk)) < chunk * v
