"""GRPO math as pure functions of tensors: advantages, the clipped loss, token log-probs."""
from replaygrpo.grpo.advantages import ADVANTAGE_SCALES, get_scale, group_advantages, register_scale
from replaygrpo.grpo.logprobs import sequence_logprobs_from_hidden, token_logprobs
from replaygrpo.grpo.loss import LOSS_AGGS, Aggregation, aggregate, get_agg, policy_loss, register_agg
from replaygrpo.grpo.mismatch import logprob_gap

__all__ = [
    "ADVANTAGE_SCALES",
    "LOSS_AGGS",
    "Aggregation",
    "aggregate",
    "get_agg",
    "get_scale",
    "group_advantages",
    "logprob_gap",
    "policy_loss",
    "register_agg",
    "register_scale",
    "sequence_logprobs_from_hidden",
    "token_logprobs",
]
