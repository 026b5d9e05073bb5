"""Accuracy-Efficiency Score (AES) of O1-Pruner (Luo et al., 2025).

With the relative length saving dL = (L_base - L) / L_base and the relative accuracy
change dA = (A - A_base) / A_base:

    AES = alpha * dL + beta * |dA|    if dA >= 0
    AES = alpha * dL - gamma * |dA|   if dA < 0

Defaults alpha=1, beta=3, gamma=5 are the paper's: an accuracy drop costs more than an
equal gain earns. Higher is better; the baseline scores 0.

Over several benchmarks there are two conventions, and papers use both without saying
which; the tables show both:
- `aes_of_average`: AES of the benchmark-averaged accuracy and length (one pair of numbers).
- `mean_aes`: the mean of the per-benchmark AES values. It weighs relative changes on each
  benchmark equally, so a 2-point gain on AIME (base 10%) counts as much as 14 points on
  MATH500 (base 70%).
"""
from __future__ import annotations

from collections.abc import Mapping


class AESError(ValueError):
    """AES is undefined for this baseline (zero accuracy or zero length)."""


def aes(acc: float, length: float, base_acc: float, base_length: float,
        alpha: float = 1.0, beta: float = 3.0, gamma: float = 5.0) -> float:
    """AES of (accuracy, mean length) against the baseline's; accuracy in any unit (fraction or %)."""
    if base_acc == 0:
        raise AESError("AES is undefined when the baseline accuracy is 0: the relative accuracy "
                       "change (A - A_base) / A_base divides by it.")
    if base_length == 0:
        raise AESError("AES is undefined when the baseline mean length is 0: the relative length "
                       "saving (L_base - L) / L_base divides by it.")
    d_len = (base_length - length) / base_length
    d_acc = (acc - base_acc) / base_acc
    return alpha * d_len + (beta * abs(d_acc) if d_acc >= 0 else -gamma * abs(d_acc))


def aes_per_benchmark(acc: Mapping[str, float], length: Mapping[str, float],
                      base_acc: Mapping[str, float], base_length: Mapping[str, float],
                      alpha: float = 1.0, beta: float = 3.0, gamma: float = 5.0) -> dict[str, float]:
    """AES on each benchmark of `acc` (which must all be in the baseline); errors name the benchmark."""
    out = {}
    for name in acc:
        try:
            out[name] = aes(acc[name], length[name], base_acc[name], base_length[name], alpha, beta, gamma)
        except AESError as err:
            raise AESError(f"{name}: {err}") from None
    return out


def aes_of_average(acc: Mapping[str, float], length: Mapping[str, float],
                   base_acc: Mapping[str, float], base_length: Mapping[str, float],
                   alpha: float = 1.0, beta: float = 3.0, gamma: float = 5.0) -> float:
    """Convention 1: AES of the mean accuracy and mean length over the benchmarks of `acc`."""
    names = list(acc)
    mean = lambda d: sum(d[n] for n in names) / len(names)  # noqa: E731
    try:
        return aes(mean(acc), mean(length), mean(base_acc), mean(base_length), alpha, beta, gamma)
    except AESError as err:
        raise AESError(f"benchmark average: {err}") from None


def mean_aes(acc: Mapping[str, float], length: Mapping[str, float],
             base_acc: Mapping[str, float], base_length: Mapping[str, float],
             alpha: float = 1.0, beta: float = 3.0, gamma: float = 5.0) -> float:
    """Convention 2: the mean over benchmarks of the per-benchmark AES."""
    per = aes_per_benchmark(acc, length, base_acc, base_length, alpha, beta, gamma)
    return sum(per.values()) / len(per)
