"""Rollout records and generation engines."""
from replaygrpo.rollout.types import Completion, Rollout, SamplingParams

__all__ = ["Completion", "Rollout", "SamplingParams"]
