"""Shared fixtures: the real data beside the repo, a fast toy config, a cached warm start."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REPLAYGRPO_SHARED", REPO.parent / "shared"))
CACHE = REPO / ".cache"

torch.set_num_threads(2)


def toy_overrides(*extra: str) -> list[str]:
    """Overrides for a seconds-long toy run; the warm start is shared via the repo's cache."""
    return [f"cache_dir={CACHE}", "trainer.steps=2", "trainer.prompts_per_step=4", "trainer.group_size=4",
            "trainer.eval_size=32", "trainer.eval_every=0", *extra]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED / "data"
