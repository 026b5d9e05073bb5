"""Statistics for comparing methods over paired seeds: curve areas, paired tests, Holm, TOST, power.

Seeds are paired: seed s of every arm starts from the same base model and draws the same
prompt stream, so an arm is compared with the baseline through the per-seed differences
d_s = arm_s - baseline_s (a paired t-test, and Wilcoxon's signed-rank test, which assumes
no normality). Several arms against one baseline are a family of tests: Holm's step-down
correction keeps the chance of any false "differs" at alpha. "No significant difference"
is not "as good as": that needs an equivalence test, here TOST (two one-sided t-tests)
against a margin stated before the experiment; equivalence at level alpha is the
(1 - 2 alpha) confidence interval of the mean difference lying inside (-margin, margin).
Distributions come from scipy.stats.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


def curve_auc(x: Sequence[float], y: Sequence[float], x_max: float) -> float:
    """Mean of y over [x[0], x_max] (the area under the piecewise-linear curve divided by the width).

    x must be increasing; the curve is cut at x_max by linear interpolation, so runs of
    different length are compared over the same budget. With x starting at 0 rollouts and
    y the eval accuracy, this is the accuracy averaged over the rollout budget: a method
    that learns faster has a larger area even when all methods end at the same plateau.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < 2 or np.any(np.diff(xs) <= 0):
        raise ValueError(f"curve_auc needs at least two points with increasing x, got x={xs.tolist()}.")
    if not xs[0] < x_max <= xs[-1]:
        raise ValueError(f"x_max={x_max} is outside the curve's range ({xs[0]}, {xs[-1]}].")
    keep = xs < x_max
    cx = np.append(xs[keep], x_max)
    cy = np.append(ys[keep], np.interp(x_max, xs, ys))
    return float(np.trapezoid(cy, cx) / (x_max - xs[0]))


@dataclass
class Paired:
    """arm minus baseline over paired seeds."""

    n: int
    mean: float  # mean difference
    sd: float  # sample std of the differences
    ci_low: float  # (1 - alpha) t confidence interval of the mean difference
    ci_high: float
    p_t: float  # paired t-test, two-sided
    p_wilcoxon: float  # Wilcoxon signed-rank, two-sided (exact for small n); nan if every difference is 0
    p_tost: float  # TOST against +-margin: small means equivalent
    margin: float


def paired(baseline: Sequence[float], arm: Sequence[float], margin: float, alpha: float = 0.05) -> Paired:
    """Paired comparison of `arm` against `baseline` (same seeds, same order) with an equivalence margin."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(arm, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need the same seeds: {a.shape} vs {b.shape}.")
    d = b - a
    n = len(d)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 paired seeds, got {n}.")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    nan = math.nan
    if sd == 0:  # all seeds moved by the same amount: t is undefined, the CI is a point
        p_t = 1.0 if mean == 0 else 0.0
        return Paired(n, mean, sd, mean, mean, p_t, nan, 0.0 if abs(mean) < margin else 1.0, margin)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    p_t = float(stats.ttest_rel(b, a).pvalue)
    p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else nan
    p_lower = float(stats.ttest_1samp(d, -margin, alternative="greater").pvalue)
    p_upper = float(stats.ttest_1samp(d, margin, alternative="less").pvalue)
    return Paired(n, mean, sd, mean - half, mean + half, p_t, p_w, max(p_lower, p_upper), margin)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in input order; nan stays nan."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def verdict(result: Paired, p_adjusted: float, alpha: float = 0.05, scale: float = 1.0, unit: str = "") -> str:
    """`better` / `worse` (Holm-adjusted paired t), `equivalent` (TOST within the margin), else `inconclusive`.

    The margin is written as `margin * scale` followed by `unit` (e.g. 100 and " points" for fractions)."""
    equivalent = result.p_tost < alpha
    margin = f"±{result.margin * scale:g}{unit}"
    if p_adjusted < alpha:  # a real but small difference can be both
        return ("better" if result.mean > 0 else "worse") + (f", within {margin}" if equivalent else "")
    if equivalent:
        return f"equivalent ({margin})"
    return "inconclusive"


def power(sd: float, n: int, effect: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test with n seeds to detect a true mean difference `effect`."""
    if n < 2 or sd <= 0:
        return math.nan
    df, nc = n - 1, effect / (sd / math.sqrt(n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    wrong_side = float(stats.nct.cdf(-crit, df, nc))  # scipy gives nan where it underflows far in the tail
    return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(wrong_side) else wrong_side)


def detectable_effect(sd: float, n: int, alpha: float = 0.05, target: float = 0.8) -> float:
    """The smallest true mean difference a paired t-test with n seeds finds with probability `target`."""
    if n < 2 or sd <= 0:
        return math.nan
    high = 3 * (stats.t.ppf(1 - alpha / 2, n - 1) + 2) * sd / math.sqrt(n)  # power ~1 there
    return float(optimize.brentq(lambda e: power(sd, n, e, alpha) - target, 0.0, high))
