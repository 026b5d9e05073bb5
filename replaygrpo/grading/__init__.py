"""Answer extraction and equivalence for math rewards and evals.

``grade(response, gold)`` is the reward: the last ``\\boxed{}`` (or, without one, the
fallback the settings name) compared with the gold by cheap normalisation, exact numbers,
and math-verify under a hard time limit. ``GradingPool`` does the same for many responses
in killable worker processes. ``GraderSettings`` and ``PROFILES`` (``default``,
``qwen_math``) fix tolerance, percent handling and the no-box fallback.

Modules, lowest first: ``settings``, ``extract`` -> ``numbers`` -> ``lists`` -> ``equivalence``
-> ``pool`` -> ``grader``.
"""
from replaygrpo.grading.extract import extract_answer, normalize
from replaygrpo.grading.grader import equivalent, grade
from replaygrpo.grading.pool import GradingPool
from replaygrpo.grading.settings import PROFILES, GraderSettings, grader_settings

__all__ = ["PROFILES", "GraderSettings", "GradingPool", "equivalent", "extract_answer", "grade",
           "grader_settings", "normalize"]
