"""The paper grid's gate: read the pilot sweep and decide whether the full grid may start.

    python scripts/pilot_gate.py multirun/paper/pilot [--arms grpo,replay] [--lrs 1e-6,2.5e-6]

The pilot is Qwen3-0.6B-Base x {grpo, replay} x two learning rates (scripts/reproduce_paper.sh,
STAGE=pilot). The grid may start when every pilot job finished, none skipped a step, and at
one learning rate or more every arm's in-training held-out accuracy (the fixed MATH500
subset) ended above where it started. The learning rate kept for 0.6B is the one with the
higher mean final held-out accuracy over the arms. Prints a table of the pilot and, last,
`lr=<value>`; exits 1, naming what failed, when the gate is closed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from replaygrpo.report.sweep import collect_runs


def gate(sweep: Path, arms: list[str], lrs: list[float]) -> tuple[float | None, list[str], list[str]]:
    """(the kept lr or None, table lines, reasons the gate is closed)."""
    runs = {}
    for run in collect_runs(sweep):
        key = (str(run.config.get("method.name")), float(run.config.get("trainer.lr", "nan")),
               int(run.config.get("trainer.mini_batches", 1)))
        runs[key] = run
    lines = ["| arm | lr | status | skipped steps | held-out start | held-out final |", "|---|---|---|---|---|---|"]
    problems, learned, final = [], {}, {}
    for lr in lrs:
        for arm in arms:
            run = runs.get((arm, lr, 1))
            if run is None:
                problems.append(f"no pilot job for {arm} at lr {lr:g} under {sweep}")
                continue
            s = run.summary or {}
            start, end = s.get("start_accuracy"), s.get("final_accuracy")
            lines.append(f"| {arm} | {lr:g} | {run.status} | {s.get('skipped_steps', '-')} | "
                         f"{'-' if start is None else f'{start:.3f}'} | {'-' if end is None else f'{end:.3f}'} |")
            if run.status != "finished":
                problems.append(f"{run.path}: {run.status}")
            elif s.get("skipped_steps"):
                problems.append(f"{run.path}: {s['skipped_steps']} non-finite steps skipped")
            elif start is None or end is None:
                problems.append(f"{run.path}: no in-training held-out accuracy (trainer.eval_benchmark unset?)")
            else:
                learned.setdefault(lr, []).append(end > start)
                final.setdefault(lr, []).append(end)
    ok = [lr for lr in lrs if len(learned.get(lr, [])) == len(arms) and all(learned[lr])]
    if not ok and not problems:
        problems.append("at no learning rate did every arm's held-out accuracy rise above its start")
    best = max(ok, key=lambda lr: sum(final[lr]) / len(final[lr])) if ok and not problems else None
    return best, lines, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--arms", default="grpo,replay")
    parser.add_argument("--lrs", default="1e-6,2.5e-6")
    args = parser.parse_args(argv)
    try:
        best, lines, problems = gate(args.sweep, args.arms.split(","), [float(x) for x in args.lrs.split(",")])
    except FileNotFoundError as err:
        print(f"gate closed: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    if problems:
        print("gate closed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"lr={best:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
