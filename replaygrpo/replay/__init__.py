"""Experience replay for GRPO: buffers (age eviction, prioritised sampling) and batch composition."""
from replaygrpo.replay.buffer import BaseReplayBuffer, ReplayBuffer
from replaygrpo.replay.compose import compose_batch, num_replay
from replaygrpo.replay.naive import NaiveReplayBuffer

__all__ = ["BaseReplayBuffer", "NaiveReplayBuffer", "ReplayBuffer", "compose_batch", "num_replay"]
