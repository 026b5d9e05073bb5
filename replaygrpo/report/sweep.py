"""A Hydra multirun sweep dir as one table and one plot: accuracy against the swept keys.

`replaygrpo train --multirun replay.tau_max=1,2 seed=0,1` writes one job dir per value
combination under hydra.sweep.dir (`<sweep>/<override_dirname>/`, each holding
`.hydra/config.yaml` and `.hydra/overrides.yaml`). Here the jobs are grouped by the values
of the `by` keys and averaged over everything else (normally the seed), unlike
replaygrpo.report.table, which groups by the whole config.

The headline metric of a run is the mean toy test accuracy (`eval/accuracy`) over its last
`window` evals (default 3). One greedy eval on the default 2,400 distinct problems has a
binomial standard error of about 0.01 (sqrt(p(1-p)/2400) at p ~ 0.5), and accuracy also
jumps between neighbouring checkpoints; averaging a window of evals damps both at the cost
of mixing in slightly earlier checkpoints. For paired tests over seeds and the area under
the accuracy curve, see `replaygrpo compare` (replaygrpo.report.compare).

Jobs are never dropped silently: a job is "finished" (summary.json written), "failed" (no
summary, and a `.failed` marker or a Python traceback in its `*.log`) or "unfinished"
(still running, killed or queued); only finished jobs enter the means, and the others are
counted per row and named under the table.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from replaygrpo.report import HYDRA_CONFIG, load_run_config, mean_std
from replaygrpo.report.aes import AESError, aes
from replaygrpo.report.plot import EVAL_ACC, GENERATED, REWARD, read_metrics, seed_band
from replaygrpo.report.table import FORMATS, latex_escape, load_results

NONE = "none"
"""How a null value (e.g. replay.tau_max=null, no age bound) is shown; sorted last."""


@dataclass
class RunRecord:
    """One job dir of a sweep."""

    name: str  # path relative to the sweep dir, e.g. "replay.tau_max=1,seed=0"
    path: Path
    config: dict[str, Any]  # flattened .hydra/config.yaml ("replay.tau_max": 1)
    overrides: dict[str, str | None]  # the job's command-line overrides (.hydra/overrides.yaml), key -> value
    status: str  # "finished", "failed" or "unfinished"
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, one record per step
    summary: dict[str, Any] | None = None  # summary.json of a finished run
    results: dict[str, Any] | None = None  # eval/results.json (benchmark eval), when present


# ---------------------------------------------------------------- reading a sweep
def _parse_overrides(path: Path) -> dict[str, str | None]:
    """`["replay.tau_max=1", "+x=2", "seed=0"]` -> {"replay.tau_max": "1", "x": "2", "seed": "0"}; null -> None."""
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    out: dict[str, str | None] = {}
    for item in OmegaConf.to_container(OmegaConf.load(path)) or []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = None if value == "null" else value
    return out


def _status(job: Path) -> str:
    if (job / "summary.json").is_file():
        return "finished"
    if (job / ".failed").exists() or any("Traceback (most recent call last)" in p.read_text(errors="replace")
                                         for p in job.glob("*.log")):
        return "failed"
    return "unfinished"


def collect_runs(sweep_dir: Path) -> list[RunRecord]:
    """Every job dir (holding .hydra/config.yaml) at depth 1 or 2 under `sweep_dir`, sorted by name.

    Depth 2 covers a sweep root holding several sweeps (e.g. one per model size). A job's
    metrics.jsonl may be cut off mid-line (a killed run); the cut line is skipped.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory.")
    jobs = sorted({p.parent.parent for pattern in ("*/.hydra/config.yaml", "*/*/.hydra/config.yaml")
                   for p in sweep_dir.glob(pattern)} - {sweep_dir})
    runs = []
    for job in jobs:
        results = job / "eval" / "results.json"
        summary = job / "summary.json"
        runs.append(RunRecord(
            name=str(job.relative_to(sweep_dir)), path=job, config=load_run_config(job) or {},
            overrides=_parse_overrides(job / HYDRA_CONFIG.parent / "overrides.yaml"), status=_status(job),
            metrics=read_metrics(job) if (job / "metrics.jsonl").is_file() else [],
            summary=json.loads(summary.read_text()) if summary.is_file() else None,
            results=load_results(results) if results.is_file() else None))
    return runs


def swept_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Override keys whose value differs between jobs (what the sweep varied), sorted."""
    keys = sorted({k for r in runs for k in r.overrides})
    return [k for k in keys if len({r.overrides.get(k, "\0missing") for r in runs}) > 1]


# ---------------------------------------------------------------- per-run numbers
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_stats(run: RunRecord, window: int = 3) -> dict[str, float]:
    """A run's numbers (nan where not logged): headline, final_acc (fractions), reward, s_per_step,
    rollouts; bench_acc (fraction) and bench_tokens from eval/results.json."""
    evals = [float(r[EVAL_ACC]) for r in run.metrics if _finite(r.get(EVAL_ACC))]
    rewards = [float(r[REWARD]) for r in run.metrics if _finite(r.get(REWARD))]
    times = [float(r["time/step"]) for r in run.metrics if _finite(r.get("time/step"))]
    final = (run.summary or {}).get("final_accuracy")
    rollouts = (run.summary or {}).get("rollouts_generated")
    if rollouts is None and run.metrics:
        rollouts = run.metrics[-1].get(GENERATED)
    tail = rewards[-max(1, math.ceil(0.1 * len(rewards))):]  # the last 10% of steps
    average = (run.results or {}).get("average", {})
    nan = math.nan
    return {
        "headline": float(np.mean(evals[-window:])) if evals else nan,
        "final_acc": float(final) if _finite(final) else (evals[-1] if evals else nan),
        "reward": float(np.mean(tail)) if tail else nan,
        "s_per_step": float(np.median(times)) if times else nan,
        "rollouts": float(rollouts) if _finite(rollouts) else nan,
        "bench_acc": float(average["accuracy"]) if _finite(average.get("accuracy")) else nan,
        "bench_tokens": float(average["mean_tokens"]) if _finite(average.get("mean_tokens")) else nan,
    }


def run_headline(run_dir: Path, window: int = 3) -> float | None:
    """The headline accuracy of one run dir (an objective for a sweeper such as Optuna), or None."""
    metrics = read_metrics(Path(run_dir)) if (Path(run_dir) / "metrics.jsonl").is_file() else []
    value = run_stats(RunRecord("", Path(run_dir), {}, {}, "finished", metrics), window)["headline"]
    return None if math.isnan(value) else value


# ---------------------------------------------------------------- grouping
def display(value: Any) -> str:
    """A config value as shown in tables and on axes: None -> "none", booleans lower case."""
    return NONE if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _as_keys(by: str | Sequence[str]) -> list[str]:
    keys = [k.strip() for part in ([by] if isinstance(by, str) else by) for k in part.split(",") if k.strip()]
    if not keys:
        raise ValueError("no --by key given: name the swept config key(s) to group by, e.g. replay.tau_max.")
    return keys


@dataclass
class Group:
    values: tuple[str, ...]  # displayed value of each `by` key
    runs: list[RunRecord]

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "finished"]

    @property
    def others(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status != "finished"]


def group_sweep(runs: Sequence[RunRecord], by: list[str]) -> list[Group]:
    """Runs grouped by their `by` values, sorted: numbers numerically, then strings, "none" last.

    A key no run has is a ValueError listing the swept keys; a run lacking a key some other
    run has shows "none" for it.
    """
    if not runs:
        raise ValueError("no job dirs (with .hydra/config.yaml) found in the sweep directory.")
    for key in by:
        if not any(key in r.config or key in r.overrides for r in runs):
            swept = swept_keys(runs)
            raise ValueError(f"no run in the sweep has the key {key!r}; swept keys: "
                             f"{', '.join(swept) if swept else '(none: every job has the same overrides)'}.")
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for r in runs:
        vals = tuple(display(r.config.get(k, r.overrides.get(k))) for k in by)
        groups.setdefault(vals, []).append(r)

    def numeric(v: str) -> float | None:
        try:
            return float(v)
        except ValueError:
            return None

    all_numeric = [all(numeric(v[i]) is not None for v in groups if v[i] != NONE) for i in range(len(by))]

    def order(vals: tuple[str, ...]) -> tuple:
        return tuple((v == NONE, numeric(v) if all_numeric[i] and v != NONE else 0.0, v) for i, v in enumerate(vals))

    return [Group(v, groups[v]) for v in sorted(groups, key=order)]


# ---------------------------------------------------------------- the table
STATS = ("headline", "final_acc", "reward", "s_per_step", "rollouts", "bench_acc", "bench_tokens")


@dataclass
class SweepTable:
    """What the renderers draw: rows (groups) with their seed mean/std per statistic."""

    keys: list[str]
    groups: list[Group]
    stats: list[dict[str, tuple[float, float]]]  # per group: statistic -> (mean, std over seeds)
    window: int
    bench: bool  # every row has benchmark results
    aes: list[float] | None  # per group, when a baseline was given and bench
    notes: list[str]

    def header(self) -> list[str]:
        return [*self.keys, "Seeds", f"Acc last {self.window} (%)", "Final acc (%)", "Reward (last 10%)",
                "s/step", "Rollouts", "Failed/unfinished", *(["Bench avg (%)", "Tokens"] if self.bench else []),
                *(["AES"] if self.aes is not None else [])]


def sweep_table(sweep_dir: Path, by: str | Sequence[str], fmt: str = "md", window: int = 3,
                baseline: str | None = None) -> str:
    """One row per value combination of the `by` keys, seeds averaged (mean ± sample std), as md, csv or latex.

    Columns: the `by` values, finished seeds, the headline accuracy (mean of the last
    `window` evals, %), final accuracy (%), reward over the last 10% of steps, median
    s/step, rollouts generated, failed/unfinished counts (job names listed below the
    table). When every row has eval/results.json: benchmark average accuracy (%), mean
    tokens, and with `baseline` (a row's value(s), e.g. "grpo" or "tau_max=2"), the AES of
    the averaged accuracy and length against that row (replaygrpo.report.aes).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; known: {', '.join(FORMATS)}.")
    keys = _as_keys(by)
    runs = collect_runs(Path(sweep_dir))
    groups = group_sweep(runs, keys)
    stats = []
    for g in groups:
        per_run = [run_stats(r, window) for r in g.finished]
        # nan where a run did not log it (no eval/results.json, no eval step): left out of the mean.
        stats.append({s: mean_std([x[s] for x in per_run], nan="omit") for s in STATS})
    bench = all(any(r.results for r in g.finished) for g in groups)
    t = SweepTable(keys, groups, stats, window, bench, None, [
        f"Toy test accuracy in %, mean ± std over finished seeds; 'last {window}' = the mean of each run's "
        f"last {window} evals; reward over the last 10% of steps; s/step = median over steps."])
    pooled = [k for k in swept_keys(runs) if k not in keys and k != "seed"]
    if pooled:
        t.notes.append(f"Rows pool runs that also differ in: {', '.join(pooled)}.")
    if baseline is not None:
        base = stats[groups.index(_find_group(groups, keys, baseline))]
        if not bench:
            t.notes.append("AES needs eval/results.json in every row (eval_after_train=true or `replaygrpo eval`).")
        else:
            t.aes = []
            for s in stats:
                try:
                    t.aes.append(aes(s["bench_acc"][0], s["bench_tokens"][0], base["bench_acc"][0],
                                     base["bench_tokens"][0]))
                except AESError as err:
                    t.aes.append(math.nan)
                    if f"AES n/a: {err}" not in t.notes:
                        t.notes.append(f"AES n/a: {err}")
            t.notes.append(f"AES (alpha=1, beta=3, gamma=5) of the benchmark-averaged accuracy and tokens vs "
                           f"the row {baseline!r}.")
    others = [r for g in groups for r in g.others]
    if others:
        t.notes.append("Not in the means: " + "; ".join(f"{r.name} ({r.status})" for r in others) + ".")
    return {"md": _markdown, "csv": _csv, "latex": _latex}[fmt](t)


def _find_group(groups: list[Group], keys: list[str], name: str) -> Group:
    """The row named `name`: its value(s) joined by ", ", or "key=value, ..." (full or last key part)."""
    want = name.replace(" ", "")
    for g in groups:
        forms = {",".join(g.values), ",".join(f"{k}={v}" for k, v in zip(keys, g.values)),
                 ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, g.values))}
        if want in forms:
            return g
    raise ValueError(f"baseline {name!r} is not a row; rows: {'; '.join(', '.join(g.values) for g in groups)}.")


def _fmt(mean: float, std: float, scale: float, digits: int, pm: str) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{scale * mean:.{digits}f}" + ("" if math.isnan(std) else f"{pm}{scale * std:.{digits}f}")


def _cells(t: SweepTable, i: int, pm: str) -> list[str]:
    g, s, nan = t.groups[i], t.stats[i], math.nan
    failed = sum(r.status == "failed" for r in g.runs)
    cells = [*g.values, str(len(g.finished)), _fmt(*s["headline"], 100, 1, pm), _fmt(*s["final_acc"], 100, 1, pm),
             _fmt(*s["reward"], 1, 3, pm), _fmt(s["s_per_step"][0], nan, 1, 2, pm),
             _fmt(s["rollouts"][0], nan, 1, 0, pm), f"{failed}/{len(g.others) - failed}"]
    if t.bench:
        cells += [_fmt(*s["bench_acc"], 100, 1, pm), _fmt(s["bench_tokens"][0], nan, 1, 0, pm)]
    if t.aes is not None:
        cells.append(_fmt(t.aes[i], nan, 1, 3, pm))
    return cells


def _markdown(t: SweepTable) -> str:
    n = len(t.header()) - len(t.keys)
    lines = ["| " + " | ".join(t.header()) + " |", "|" + "|".join([":---"] * len(t.keys) + ["---:"] * n) + "|"]
    for i in range(len(t.groups)):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(t, i, " ± ")) + " |")
    return "\n".join([*lines, "", *t.notes]) + "\n"


def _latex(t: SweepTable) -> str:
    n = len(t.header()) - len(t.keys)
    lines = [*(f"% {latex_escape(x)}" for x in t.notes), "\\begin{tabular}{" + "l" * len(t.keys) + "r" * n + "}",
             "\\toprule", " & ".join(latex_escape(h) for h in t.header()) + " \\\\", "\\midrule"]
    for i in range(len(t.groups)):
        cells = [latex_escape(c).replace(" PM ", " $\\pm$ ") for c in _cells(t, i, " PM ")]
        lines.append(" & ".join(cells) + " \\\\")
    return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"]) + "\n"


def _csv(t: SweepTable) -> str:
    """Raw numbers (accuracy as fractions), mean and std in separate columns, unfinished job names in one cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = [s for s in STATS if t.bench or not s.startswith("bench")]
    w.writerow([*t.keys, "seeds", *(f"{c}{x}" for c in cols for x in ("", "_std")), "failed", "unfinished",
                "not_finished_jobs", *(["aes"] if t.aes is not None else [])])
    val = lambda x: "" if math.isnan(x) else f"{x:.6g}"  # noqa: E731
    for i, (g, s) in enumerate(zip(t.groups, t.stats)):
        failed = sum(r.status == "failed" for r in g.runs)
        w.writerow([*g.values, len(g.finished), *(val(s[c][j]) for c in cols for j in (0, 1)), failed,
                    len(g.others) - failed, ";".join(r.name for r in g.others),
                    *([val(t.aes[i])] if t.aes is not None else [])])
    return buf.getvalue()


# ---------------------------------------------------------------- the plots
def sweep_plot(sweep_dir: Path, by: str | Sequence[str], out: Path, window: int = 3) -> list[Path]:
    """Two PNGs in the directory `out`; returns their paths.

    `accuracy_by_<keys>.png`: the headline accuracy (%) against the `by` value on a
    categorical axis (in table order, "none" last): the mean over finished seeds with std
    error bars, and each seed as a dot. `accuracy_vs_rollouts_by_<keys>.png`: toy eval
    accuracy against rollouts generated, one line per value (the mean over seeds) with a
    min-max band over seeds (replaygrpo.report.plot.seed_band).
    """
    keys = _as_keys(by)
    groups = group_sweep(collect_runs(Path(sweep_dir)), keys)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "_".join(k.replace("/", "-") for k in keys)
    labels = [", ".join(g.values) for g in groups]

    fig = Figure(figsize=(max(5.0, 0.9 * len(groups) + 2), 4), layout="constrained")
    ax = fig.subplots()
    for i, g in enumerate(groups):
        seeds = [100 * v for v in (run_stats(r, window)["headline"] for r in g.finished) if not math.isnan(v)]
        if seeds:
            ax.scatter([i] * len(seeds), seeds, s=14, color="0.5", zorder=2)
            ax.errorbar([i], [np.mean(seeds)], yerr=[np.std(seeds, ddof=1) if len(seeds) > 1 else 0.0],
                        fmt="o", color="C0", capsize=4, markersize=7, zorder=3)
    ax.set_xticks(range(len(groups)), labels)
    ax.set_xlabel(", ".join(keys))
    ax.set_ylabel(f"toy test accuracy (%), mean of last {window} evals")
    ax.grid(alpha=0.3, axis="y")
    first = out / f"accuracy_by_{slug}.png"
    fig.savefig(first, dpi=120)

    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    for label, g in zip(labels, groups):
        x, mean, lo, hi = seed_band([r.metrics for r in g.finished], EVAL_ACC, GENERATED)
        if len(x) == 0:
            continue
        (line,) = ax.plot(x, 100 * mean, marker="o", markersize=3, label=f"{label} (n={len(g.finished)})")
        ax.fill_between(x, 100 * lo, 100 * hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("rollouts generated")
    ax.set_ylabel("toy test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(title=", ".join(keys), fontsize=8)
    second = out / f"accuracy_vs_rollouts_by_{slug}.png"
    fig.savefig(second, dpi=120)
    return [first, second]
