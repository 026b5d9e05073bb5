"""Answer extraction and equivalence for math rewards and evals.

``grade(response, gold)`` is the reward: the last ``\\boxed{}`` (or an "answer is"
phrase) compared with the gold by cheap normalisation, exact numbers, and math-verify
under a hard time limit. ``GradingPool`` does the same for many responses in killable
worker processes.
"""
from replaygrpo.grading.equivalence import equivalent
from replaygrpo.grading.extract import extract_answer, normalize
from replaygrpo.grading.pool import GradingPool, grade

__all__ = ["GradingPool", "equivalent", "extract_answer", "grade", "normalize"]
