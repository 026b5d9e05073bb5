"""Rollout records and generation engines."""
from replaygrpo.records import Completion, Rollout, SamplingParams

__all__ = ["Completion", "Rollout", "SamplingParams"]
