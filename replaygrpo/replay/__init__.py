"""Experience replay for GRPO: buffers (age eviction, prioritised sampling) and batch composition."""
from replaygrpo.replay.buffer import BaseReplayBuffer, NaiveReplayBuffer, ReplayBuffer
from replaygrpo.replay.compose import compose_batch, num_replay

__all__ = ["BaseReplayBuffer", "NaiveReplayBuffer", "ReplayBuffer", "compose_batch", "num_replay"]
