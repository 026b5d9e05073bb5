"""replaygrpo.report.stats: hand-checked cases for the curve area, the paired tests, Holm and TOST."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from replaygrpo.report.stats import curve_auc, detectable_effect, holm, paired, power, verdict


def test_curve_auc_is_the_mean_over_the_budget():
    # 0 -> 0.5 linearly over [0, 100], then flat: area 25 + 50 over width 200.
    assert curve_auc([0, 100, 200], [0.0, 0.5, 0.5], 200) == pytest.approx(75 / 200)
    # Cut at 50 by interpolation: mean of a line from 0 to 0.25.
    assert curve_auc([0, 100, 200], [0.0, 0.5, 0.5], 50) == pytest.approx(0.125)
    # A faster learner with the same end point has the larger area.
    assert curve_auc([0, 50, 200], [0.0, 0.5, 0.5], 200) > curve_auc([0, 150, 200], [0.0, 0.5, 0.5], 200)
    with pytest.raises(ValueError, match="increasing x"):
        curve_auc([0, 0, 1], [0, 1, 1], 1)
    with pytest.raises(ValueError, match="outside"):
        curve_auc([0, 1], [0, 1], 2)


def test_paired_matches_the_textbook_formulas():
    base = np.array([0.50, 0.52, 0.48, 0.55, 0.51, 0.49, 0.53, 0.50])
    arm = base + np.array([0.03, 0.05, 0.01, 0.04, 0.02, 0.06, 0.03, 0.02])
    r = paired(base, arm, margin=0.01)
    d = arm - base
    se = d.std(ddof=1) / math.sqrt(8)
    assert r.n == 8 and r.mean == pytest.approx(d.mean()) and r.sd == pytest.approx(d.std(ddof=1))
    assert r.ci_high - r.mean == pytest.approx(sps.t.ppf(0.975, 7) * se)
    t = d.mean() / se
    assert r.p_t == pytest.approx(2 * sps.t.sf(abs(t), 7))
    assert r.p_wilcoxon == pytest.approx(2 / 2**8)  # every difference positive: the exact minimum
    assert r.p_tost > 0.5  # a clear improvement is not equivalence within 1 point
    assert verdict(r, r.p_t) == "better"
    assert verdict(paired(arm, base, margin=0.01), r.p_t) == "worse"
    assert verdict(paired(base, arm, margin=0.2), r.p_t) == "better, within ±0.2"  # small yet real


def test_tost_calls_equivalent_only_within_the_margin():
    base = np.array([0.50, 0.52, 0.48, 0.55, 0.51, 0.49, 0.53, 0.50])
    arm = base + np.array([0.004, -0.003, 0.002, -0.004, 0.001, -0.002, 0.003, -0.001])  # tiny differences
    tight = paired(base, arm, margin=0.02)
    assert tight.p_tost < 0.05 and verdict(tight, tight.p_t).startswith("equivalent")
    # The same data against a margin inside its noise is not equivalent: inconclusive, not "no difference".
    loose = paired(base, arm, margin=0.0005)
    assert loose.p_tost > 0.05 and verdict(loose, loose.p_t) == "inconclusive"
    # TOST's p is the larger of the two one-sided tests.
    d = arm - base
    lower = sps.ttest_1samp(d, -0.02, alternative="greater").pvalue
    upper = sps.ttest_1samp(d, 0.02, alternative="less").pvalue
    assert tight.p_tost == pytest.approx(max(lower, upper))


def test_paired_needs_the_same_seeds():
    with pytest.raises(ValueError, match="same seeds"):
        paired([0.1, 0.2], [0.1, 0.2, 0.3], margin=0.01)
    with pytest.raises(ValueError, match="at least 2"):
        paired([0.1], [0.2], margin=0.01)


def test_holm_step_down():
    # Sorted p: 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04); input order kept.
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1 and monotone
    out = holm([0.01, math.nan])
    assert out[0] == pytest.approx(0.01) and math.isnan(out[1])


def test_power_and_detectable_effect():
    assert power(0.02, 8, 0.0) == pytest.approx(0.05, abs=1e-6)  # no effect: the false-positive rate
    assert power(0.02, 8, 0.03) > power(0.02, 8, 0.01)
    mde = detectable_effect(0.02, 8)
    assert power(0.02, 8, mde) == pytest.approx(0.8, abs=1e-6)
    # Paired t with 8 seeds: the MDE at 80% power is about 1.16 sd of the differences.
    assert mde / 0.02 == pytest.approx(1.16, abs=0.01)
