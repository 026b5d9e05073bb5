"""Reports over finished runs: results tables (table.py), training curves (plot.py), AES (aes.py).

Shared here: reading a training run's Hydra config, grouping runs that differ only in
their seed, so a table row and a plotted line mean the same set of runs, and the mean and
std over such a group's seeds. A group is named
`<model.name>/<method.name>`, followed by the keys that tell apart groups which would
otherwise share that name, e.g. `qwen3-4b/replay (replay.tau_max=4)`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from replaygrpo.config import BOOKKEEPING_KEYS, flatten, key_matches

__all__ = ["IGNORED", "base_label", "flatten", "group_runs", "load_run_config", "mean_std", "method_key"]
T = TypeVar("T")

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
IGNORED = BOOKKEEPING_KEYS
"""Keys that do not make a different method: runs differing only in these are seeds of one row."""


def load_run_config(run_dir: Path) -> dict[str, Any] | None:
    """The flattened `.hydra/config.yaml` of a training run, or None if the dir has none."""
    path = Path(run_dir) / HYDRA_CONFIG
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    # resolve=False: interpolations such as ${hydra:runtime.cwd} only resolve inside Hydra.
    return flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))


def _ignored(key: str) -> bool:
    return key_matches(key, IGNORED)


def method_key(config: dict[str, Any]) -> Hashable:
    """What identifies a method: every config key except the seed and bookkeeping (IGNORED)."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in config.items() if not _ignored(k)))


def base_label(config: dict[str, Any]) -> str:
    """`<model.name>/<method.name>` of a flattened training config."""
    return f"{config.get('model.name', '?')}/{config.get('method.name', '?')}"


def group_runs(items: Sequence[tuple[T, dict[str, Any] | None, str]]) -> list[tuple[str, list[T]]]:
    """Group (item, flat config or None, fallback name) triples into named rows, in input order.

    Items with a config and the same `method_key` form one group (their seeds); an item
    without a config is its own group named by its fallback name. Names are unique.
    """
    groups: dict[Hashable, tuple[dict[str, Any] | None, str, list[T]]] = {}
    for i, (item, config, fallback) in enumerate(items):
        key = method_key(config) if config is not None else ("__bare__", i)
        groups.setdefault(key, (config, fallback, []))[2].append(item)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for config, _, _ in groups.values():
        if config is not None:
            by_label.setdefault(base_label(config), []).append(config)
    named: list[tuple[str, list[T]]] = []
    seen: set[str] = set()
    for config, fallback, members in groups.values():
        if config is None:
            name = fallback
        else:
            name = base_label(config)
            peers = by_label[name]
            diff = sorted({k for c in peers for k in set(c) | set(config)
                           if not _ignored(k) and len({json.dumps(p.get(k), default=str) for p in peers}) > 1})
            if diff:
                name += " (" + ", ".join(f"{k}={config.get(k)}" for k in diff) + ")"
        unique, n = name, 2
        while unique in seen:
            unique, n = f"{name} #{n}", n + 1
        seen.add(unique)
        named.append((unique, members))
    return named


def mean_std(values: Sequence[float], nan: Literal["propagate", "omit"]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) over seeds; nan for the mean without values, for the std below two.

    `nan` says what a nan value means (scipy's nan_policy names): "propagate" makes both
    results nan, for a number every seed must have (a benchmark one seed was not evaluated
    on: its cell reads n/a, not a mean over fewer seeds); "omit" leaves it out, for a number
    some runs never log (a sweep's benchmark average when only some jobs were evaluated).
    """
    if nan == "omit":
        values = [v for v in values if not math.isnan(v)]
    elif nan != "propagate":
        raise ValueError(f"nan policy {nan!r}; known: propagate, omit.")
    if not values or any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
