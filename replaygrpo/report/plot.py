"""Training curves from runs' metrics.jsonl, one line per method with seeds averaged.

Runs are grouped as in the tables (replaygrpo.report.group_runs): the same config except
the seed is one line, the mean over seeds with a shaded min-max band. Steps are matched
across seeds; a step some seeds lack is averaged over the seeds that have it. The
rollouts-generated axis uses the seeds' mean count at each step, which lets methods that
generate less per step (replay) be compared at equal sampling cost.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so no
global backend is set and nothing needs a display.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from replaygrpo.jsonl import read_jsonl
from replaygrpo.report import group_runs, load_run_config

STEP, GENERATED = "step", "rollouts/generated"
REWARD, EVAL_ACC, LENGTH, AGE_HIST = "reward/mean", "eval/accuracy", "response/tokens_mean", "replay/age_hist"


class PlotError(ValueError):
    """A run dir or its metrics file is unusable; the message names it."""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-step records of `<run_dir>/metrics.jsonl`; a cut-off last line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{path} is missing: pass training run dirs (each holds metrics.jsonl).")
    return [row for _, row in read_jsonl(path, error=PlotError, torn_tail_ok=True)]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def seed_band(runs: list[list[dict[str, Any]]], key: str, x_key: str) -> tuple[np.ndarray, ...]:
    """(x, mean, min, max) of `key` over seeds at each step where some seed logged it."""
    by_step: dict[int, tuple[list[float], list[float]]] = {}
    for records in runs:
        for r in records:
            if _finite(r.get(key)) and _finite(r.get(STEP)) and _finite(r.get(x_key)):
                xs, ys = by_step.setdefault(int(r[STEP]), ([], []))
                xs.append(float(r[x_key]))
                ys.append(float(r[key]))
    steps = sorted(by_step)
    x = np.array([np.mean(by_step[s][0]) for s in steps])
    ys = [np.array(by_step[s][1]) for s in steps]
    return (x, np.array([y.mean() for y in ys]), np.array([y.min() for y in ys]),
            np.array([y.max() for y in ys]))


def _curve_figure(groups: list[tuple[str, list[list[dict[str, Any]]]]], key: str, ylabel: str,
                  x_keys: tuple[str, ...], out: Path) -> Path | None:
    if not any(_finite(r.get(key)) for _, runs in groups for rec in runs for r in rec):
        return None  # nothing logged (e.g. no eval steps): no empty figure
    fig = Figure(figsize=(6 * len(x_keys), 4), layout="constrained")
    for ax, x_key in zip(fig.subplots(1, len(x_keys), squeeze=False)[0], x_keys):
        for label, runs in groups:
            x, mean, lo, hi = seed_band(runs, key, x_key)
            if len(x) == 0:
                continue
            marker = "o" if len(x) < 30 else None  # sparse series (eval) read better with points
            (line,) = ax.plot(x, mean, label=f"{label} (n={len(runs)})", marker=marker, markersize=3)
            if len(runs) > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("step" if x_key == STEP else "rollouts generated")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(out, dpi=120)
    return out


def _age_figure(groups: list[tuple[str, list[list[dict[str, Any]]]]], out: Path) -> Path | None:
    hists: list[tuple[str, np.ndarray]] = []
    for label, runs in groups:
        per_run = []
        for records in runs:
            rows = [r[AGE_HIST] for r in records if isinstance(r.get(AGE_HIST), list) and r[AGE_HIST]]
            if rows:
                width = max(map(len, rows))
                per_run.append(np.sum([np.pad(np.asarray(h, float), (0, width - len(h))) for h in rows], axis=0))
        if per_run:
            width = max(map(len, per_run))
            hists.append((label, np.mean([np.pad(h, (0, width - len(h))) for h in per_run], axis=0)))
    if not hists:
        return None
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    bar = 0.8 / len(hists)
    for i, (label, h) in enumerate(hists):
        ax.bar(np.arange(len(h)) + (i - (len(hists) - 1) / 2) * bar, h, width=bar, label=label)
    ax.set_xticks(range(max(len(h) for _, h in hists)))
    ax.set_xlabel("age (steps since the rollout was generated)")
    ax.set_ylabel("rollouts (sum over steps, mean over seeds)")
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=120)
    return out


def make_plots(run_dirs: list[Path], out: Path) -> list[Path]:
    """Write reward, eval accuracy, response length and replay-age PNGs into `out`; returns their paths.

    reward.png and eval_accuracy.png plot against step and against rollouts generated;
    response_length.png against step; replay_age.png is the replay age histogram summed
    over steps. A figure whose metric no run logged is skipped.
    """
    if not run_dirs:
        raise PlotError("no run dirs given.")
    items = []
    for d in map(Path, run_dirs):
        if not d.is_dir():
            raise PlotError(f"{d}: not a directory.")
        items.append((read_metrics(d), load_run_config(d), d.name))
    groups = group_runs(items)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    both = (STEP, GENERATED)
    written = [
        _curve_figure(groups, REWARD, "mean reward", both, out / "reward.png"),
        _curve_figure(groups, EVAL_ACC, "eval accuracy", both, out / "eval_accuracy.png"),
        _curve_figure(groups, LENGTH, "mean response tokens", (STEP,), out / "response_length.png"),
        _age_figure(groups, out / "replay_age.png"),
    ]
    return [p for p in written if p is not None]
