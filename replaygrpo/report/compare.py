"""`replaygrpo compare`: the toy experiment's report from Hydra multirun sweep dirs.

Arms are the runs' configs up to the seed (replaygrpo.report.group_runs, as in the tables),
named by their command-line overrides (e.g. `experiment=toy_grpo`); each arm is compared with a named baseline arm over the seeds both have (paired). The
pre-declared primary metric is the area under the accuracy-vs-budget curve, starting at
the base model's accuracy at budget 0 and cut at the smallest budget every run reached
(`curve_auc`): the accuracy averaged over the budget, which sees learning speed that a
saturated end point hides. Secondary: the accuracy at that common budget (interpolated between
evals; the last eval's accuracy and per-level accuracy are shown, not tested). Budgets (`--x`): rollouts
generated (equal sampling cost), tokens generated or forwarded, or wall-clock seconds
(equal compute). Each family of comparisons is Holm-corrected; "equivalent" needs TOST
within the stated margin. The report names every run left out and the base models used.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from replaygrpo.report import group_runs, mean_std
from replaygrpo.report.plot import EVAL_ACC
from replaygrpo.report.stats import Paired, curve_auc, detectable_effect, holm, paired, verdict
from replaygrpo.report.sweep import RunRecord, collect_runs

AXES: dict[str, tuple[str, bool]] = {
    "rollouts": ("rollouts/generated", False),
    "tokens_generated": ("tokens/generated", True),
    "tokens_forwarded": ("tokens/forwarded", True),
    "time": ("time/step", True),
}
"""Budget axis -> (metrics key, whether the key is per step and is summed over steps)."""


class CompareError(ValueError):
    """The sweeps cannot be compared as asked; the message says why."""


@dataclass
class Curve:
    x: np.ndarray  # budget at budget 0 and at each eval
    acc: np.ndarray  # eval accuracy there (the first point: the base model)
    last: dict[str, float]  # the last eval's metrics (eval/...)
    record: dict[str, Any]  # the last step's metrics


def run_curve(run: RunRecord, axis: str) -> Curve:
    """The accuracy-vs-budget curve of one finished run, from its summary and metrics.jsonl."""
    key, summed = AXES[axis]
    start = (run.summary or {}).get("start_accuracy")
    if start is None:
        raise CompareError(f"{run.path}: summary.json has no start_accuracy (not a toy run?).")
    x, acc, total, last = [0.0], [float(start)], 0.0, {}
    for rec in run.metrics:
        if key not in rec:
            raise CompareError(f"{run.path}/metrics.jsonl: step {rec.get('step')} has no {key!r} (axis {axis}).")
        total = total + float(rec[key]) if summed else float(rec[key])
        if EVAL_ACC in rec:
            x.append(total)
            acc.append(float(rec[EVAL_ACC]))
            last = {k: v for k, v in rec.items() if k.startswith("eval/")}
    if len(x) < 2:
        raise CompareError(f"{run.path}: no eval in metrics.jsonl, so no curve.")
    return Curve(np.array(x), np.array(acc), last, run.metrics[-1])


@dataclass
class Arm:
    name: str
    runs: dict[int, RunRecord]  # by seed
    curves: dict[int, Curve]


def _label(members: list[RunRecord], common: set[tuple[str, str | None]], fallback: str) -> str:
    """An arm's command-line overrides (seed and what every run shares left out), e.g. `experiment=toy_grpo`;
    the config-derived group name when its runs disagree on them or have none."""
    own = [{(k, v) for k, v in r.overrides.items() if k != "seed" and not k.startswith("hydra")} - common
           for r in members]
    if own[0] and all(o == own[0] for o in own):
        return ",".join(f"{k}={v}" for k, v in sorted(own[0], key=str))
    return fallback


def _arms(runs: Sequence[RunRecord], axis: str) -> list[Arm]:
    everyone = [set(r.overrides.items()) for r in runs]
    common = set.intersection(*everyone) if everyone else set()
    arms = []
    for name, members in group_runs([(r, r.config, r.name) for r in runs]):
        by_seed: dict[int, RunRecord] = {}
        for r in members:
            seed = int(r.config.get("seed", 0))
            if seed in by_seed:
                raise CompareError(f"arm {name!r} has seed {seed} twice ({by_seed[seed].path} and {r.path}); "
                                   "pass each sweep dir once, or give repeated runs different seeds.")
            by_seed[seed] = r
        arms.append(Arm(_label(members, common, name), dict(sorted(by_seed.items())),
                        {s: run_curve(r, axis) for s, r in by_seed.items()}))
    return arms


def _find(arms: list[Arm], name: str) -> Arm:
    exact = [a for a in arms if a.name == name]
    found = exact or [a for a in arms if name in a.name]
    if len(found) != 1:
        listing = "\n  ".join(a.name for a in arms)
        raise CompareError(f"--baseline {name!r} matches {len(found)} arms; the arms are:\n  {listing}")
    return found[0]


def _pct(x: float, sign: bool = False) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:{'+' if sign else ''}.1f}"


def _mean_sd(values: list[float]) -> str:
    mean, sd = mean_std(values, nan="omit")  # an arm's seed without the value is left out
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if math.isnan(sd) else f" ± {100 * sd:.1f}")


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else "<0.001"


def _family(title: str, base: Arm, others: list[Arm], values: dict[str, dict[int, float]], margin: float,
            alpha: float) -> list[str]:
    results: list[tuple[Arm, Paired | None, str]] = []
    for arm in others:
        seeds = sorted(set(base.curves) & set(arm.curves))
        if len(seeds) < 2:
            results.append((arm, None, f"{len(seeds)} paired seed(s)"))
            continue
        results.append((arm, paired([values[base.name][s] for s in seeds], [values[arm.name][s] for s in seeds],
                                    margin, alpha), ""))
    adjusted = holm([r.p_t if r is not None else math.nan for _, r, _ in results])
    lines = [f"**{title}** (arm − {base.name}, points; {100 * (1 - alpha):.0f}% CI; Holm over {len(others)} "
             f"arms; TOST margin ±{100 * margin:g} points)", "",
             "| Arm | Seeds | Δ mean [CI] | sd of Δ | p (t) | p (Wilcoxon) | p (Holm) | p (TOST) | MDE 80% | Verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (arm, r, why), p_adj in zip(results, adjusted):
        if r is None:
            lines.append(f"| {arm.name} | {why} | | | | | | | | not compared |")
            continue
        lines.append(f"| {arm.name} | {r.n} | {_pct(r.mean, True)} [{_pct(r.ci_low, True)}, {_pct(r.ci_high, True)}] "
                     f"| {_pct(r.sd)} | {_p(r.p_t)} | {_p(r.p_wilcoxon)} | {_p(p_adj)} | {_p(r.p_tost)} "
                     f"| {_pct(detectable_effect(r.sd, r.n, alpha))} | {verdict(r, p_adj, alpha, scale=100, unit=' points')} |")
    return lines + [""]


def compare_report(sweep_dirs: Sequence[Path], baseline: str, axis: str = "rollouts", margin: float = 0.02,
                   alpha: float = 0.05) -> str:
    """The markdown report comparing every arm in `sweep_dirs` with the `baseline` arm (see the module doc)."""
    if axis not in AXES:
        raise CompareError(f"unknown --x {axis!r}; known: {', '.join(AXES)}.")
    if margin <= 0:
        raise CompareError(f"--margin must be > 0 (a fraction of accuracy, e.g. 0.02 = 2 points), got {margin}.")
    runs = [r for d in sweep_dirs for r in collect_runs(Path(d))]
    finished = [r for r in runs if r.status == "finished"]
    if not finished:
        raise CompareError(f"no finished run in {', '.join(map(str, sweep_dirs))}.")
    arms = _arms(finished, axis)
    base = _find(arms, baseline)
    others = [a for a in arms if a is not base]
    budget = min(c.x[-1] for a in arms for c in a.curves.values())
    auc = {a.name: {s: curve_auc(c.x, c.acc, budget) for s, c in a.curves.items()} for a in arms}
    # Accuracy at the common budget (interpolated): an arm that spends more per step (a bigger batch)
    # is read where the others stop, not at its own last eval.
    at_budget = {a.name: {s: float(np.interp(budget, c.x, c.acc)) for s, c in a.curves.items()} for a in arms}
    levels = sorted({k for a in arms for c in a.curves.values() for k in c.last if k.startswith(EVAL_ACC + "/L")},
                    key=lambda k: int(k.rsplit("L", 1)[1]))

    out = ["# Toy experiment report", "",
           f"Budget axis: {axis} ({AXES[axis][0]}{', summed over steps' if AXES[axis][1] else ''}); common budget "
           f"{budget:,.0f} (the smallest any run reached). Primary metric, declared before the runs: AUC = eval "
           "accuracy averaged over the budget, from the base model at 0. Seeds are paired across arms.", ""]
    header = ["Arm", "Seeds", "AUC (%)", "Acc at budget (%)", "Last eval acc (%)", *(k.rsplit("/", 1)[1] + " (%)" for k in levels),
              "Eval tokens", "Eval truncated (%)", "Eligible pool", "s/step"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a in arms:
        cs = list(a.curves.values())
        pool = [float(np.mean([m["replay/eligible"] for m in r.metrics if "replay/eligible" in m]))
                for r in a.runs.values() if any("replay/eligible" in m for m in r.metrics)]
        times = [float(np.median([m["time/step"] for m in r.metrics if "time/step" in m])) for r in a.runs.values()]
        cells = [a.name + (" (baseline)" if a is base else ""), str(len(cs)), _mean_sd(list(auc[a.name].values())),
                 _mean_sd(list(at_budget[a.name].values())), _mean_sd([c.acc[-1] for c in cs]),
                 *(_mean_sd([c.last.get(k, math.nan) for c in cs]) for k in levels),
                 f"{np.mean([c.last.get('eval/tokens_mean', math.nan) for c in cs]):.1f}",
                 _mean_sd([c.last.get("eval/truncated", math.nan) for c in cs]),
                 f"{np.mean(pool):.0f}" if pool else "-", f"{np.mean(times):.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if others:
        out += _family("Primary: AUC", base, others, auc, margin, alpha)
        out += _family("Secondary: accuracy at the common budget", base, others, at_budget, margin, alpha)
    out.append("Verdicts: better/worse = Holm-adjusted paired t below alpha; equivalent = TOST below alpha "
               "(the CI at 1 − 2·alpha lies within the margin); anything else is inconclusive, not 'no difference'. "
               "MDE 80% = the true difference this many seeds would detect with 80% power, given the observed "
               f"sd of the differences. alpha = {alpha}.")
    bases = sorted({f"{(r.summary or {}).get('base_model', {}).get('name', '?')} "
                    f"{(r.summary or {}).get('base_model', {}).get('sha256', 'unrecorded')[:12]}" for r in finished})
    out += ["", f"Base model(s) (name, SHA-256 prefix): {'; '.join(bases)}."]
    left = [r for r in runs if r.status != "finished"]
    if left:
        out.append(f"Left out ({len(left)} not finished): " + ", ".join(f"{r.name} ({r.status})" for r in left) + ".")
    return "\n".join(out) + "\n"
