"""replaygrpo: rollout-level advantage-prioritised replay for GRPO."""
__version__ = "0.1.0"
