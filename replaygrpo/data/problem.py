"""The one record every data source produces."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    id: str
    """Stable id within its source (row index, unique_id, ...)."""
    question: str
    """The bare question; a template turns it into a prompt."""
    gold: str
    """The reference answer as a string (graded by replaygrpo.grading)."""
    source: str = ""
    """Dataset name, for outputs and error messages."""
    tolerance: float | None = None
    """Absolute tolerance the benchmark gives for this answer (OlympiadBench `error`), else None."""
