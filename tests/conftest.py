"""Shared fixtures: the real data beside the repo, a fast toy config, a cached warm start."""
from __future__ import annotations

import json
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


def train_toy(run_dir: Path, *overrides: str) -> list[dict]:
    """`replaygrpo train` of the toy lab (toy_overrides + `overrides`) into `run_dir`; its metrics.jsonl rows."""
    from typer.testing import CliRunner

    from replaygrpo.cli import app  # here, not at the top: collecting a test need not load the CLI

    out = CliRunner().invoke(app, ["train", *toy_overrides(f"hydra.run.dir={run_dir}", *overrides)])
    assert out.exit_code == 0, out.output
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED / "data"
