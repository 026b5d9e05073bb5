"""The per-step gap (docs/metrics.md) with an engine whose weight sync does nothing.

    PYTHONPATH=. python scripts/gap_stale_engine.py [hydra overrides]

Trains the toy lab for 5 steps with the HF engine built on a copy of the policy that never
receives the new weights, and prints gap/mean_abs, gap/max_abs and gap/kl per step.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
from pathlib import Path

from typer.testing import CliRunner

import replaygrpo.train
from replaygrpo.cli import app


def main(overrides: list[str]) -> None:
    real = replaygrpo.train.build_engine

    def stale(name, model, *args, **kwargs):
        engine = real(name, copy.deepcopy(model), *args, **kwargs)
        engine.sync_weights = lambda model: None  # the skipped sync
        return engine

    replaygrpo.train.build_engine = stale
    run_dir = Path(tempfile.mkdtemp(prefix="gap_stale_"))
    out = CliRunner().invoke(app, ["train", "trainer.steps=5", "trainer.eval_every=0", "trainer.eval_size=64",
                                   f"hydra.run.dir={run_dir}", *overrides])
    if out.exit_code != 0:
        sys.exit(out.output)
    print("step  gap/mean_abs  gap/max_abs  gap/kl")
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        print(f"{r['step']:4d}  {r['gap/mean_abs']:.3g}  {r['gap/max_abs']:.3g}  {r['gap/kl']:.3g}")


if __name__ == "__main__":
    main(sys.argv[1:])
