"""Reports over finished runs: results tables (table.py), training curves (plot.py), AES (aes.py).

Shared here: reading a training run's Hydra config and grouping runs that differ only in
their seed, so a table row and a plotted line mean the same set of runs. A group is named
`<model.name>/<method.name>`, followed by the keys that tell apart groups which would
otherwise share that name, e.g. `qwen3-4b/replay (replay.tau_max=4)`.
"""
from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from replaygrpo.nested import flatten

T = TypeVar("T")

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
IGNORED = ("seed", "resume", "overwrite", "cache_dir", "device", "eval_after_train", "logger.",
           "checkpoint.", "eval.out", "eval.data_root", "eval.batch_size", "eval.grader_workers", "hydra.")
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
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in IGNORED)


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
