"""Generation engines behind one interface (`engine.Engine`) and one registry (`engine.ENGINES`).

Importing the package imports every engine module, and each registers itself; a module
for an optional backend (vLLM) imports that backend only when an engine is built.
"""
from replaygrpo.records import Completion, Rollout, SamplingParams
from replaygrpo.rollout import hf, vllm_engine  # noqa: F401  (each registers its engine)
from replaygrpo.rollout.engine import ENGINES, Engine, EngineSetup, build_engine, register_engine

__all__ = ["ENGINES", "Completion", "Engine", "EngineSetup", "Rollout", "SamplingParams", "build_engine",
           "register_engine"]
