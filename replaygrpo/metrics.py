"""metrics.jsonl (one JSON object per step, flushed as written), optional wandb, the progress bar,
and the step's metrics over every rank."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from replaygrpo import distributed
from replaygrpo.config import Config


class MetricsLogger:
    def __init__(self, path: Path, cfg: Config, enabled: bool = True) -> None:
        """`enabled=False` logs nothing (the ranks other than 0 under torchrun)."""
        self.path = path
        self._file = path.open("a", encoding="utf-8") if enabled else None
        self._wandb = None
        if cfg.logger.wandb and enabled:
            import os

            import wandb  # imported only when asked for

            if not os.environ.get("WANDB_API_KEY"):
                os.environ.setdefault("WANDB_MODE", "offline")  # works with no account
            self._wandb = wandb.init(project=cfg.logger.project, dir=str(path.parent),
                                     config=asdict(cfg), name=path.parent.name)

    def log(self, metrics: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(metrics) + "\n")
        self._file.flush()
        if self._wandb is not None:
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            self._wandb.log(scalars, step=metrics["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def progress_bar(total: int, disable: bool = False) -> Progress:
    return Progress(TextColumn("step"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.description}"), TimeElapsedColumn(), TimeRemainingColumn(), disable=disable)


def global_metrics(local: dict[str, Any], max_age: int) -> tuple[dict[str, Any], int, bool, int | None]:
    """This step's metrics over every rank's share, from each rank's per-rollout numbers and counts.

    Returns (metrics, rollouts generated, whether any rank skipped the step, the stop
    signal any rank received): all ranks stop together. Each rank's loss and KL are
    already its share of the global mean, so they add up.
    """
    ranks = distributed.gather(local)
    g = {k: torch.cat([r[k] for r in ranks]) for k in ("rewards", "adv", "ages", "lengths", "truncated")}
    rep_ages = torch.cat([r["ages"][r["n_fresh"]:] for r in ranks])
    n_age = max(max_age, int(g["ages"].max())) + 1  # the age bound's length for replay, else what occurred
    clip_by_age, ratio_by_age, tokens_by_age = sum(
        torch.nn.functional.pad(r["by_age"], (0, n_age - r["by_age"].shape[1])) for r in ranks)
    forwarded = float(tokens_by_age.sum())  # zero-advantage rollouts skipped by the update are not in it
    n_tokens = max(forwarded, 1.0)
    per_age = tokens_by_age.clamp(min=1)
    skipped = any(r["skipped"] for r in ranks)
    n_fresh = sum(r["n_fresh"] for r in ranks)
    metrics = {
        "reward/mean": float(g["rewards"].mean()),
        "response/tokens_mean": float(g["lengths"].mean()),
        "response/truncated_frac": float(g["truncated"].mean()),
        "batch/n_fresh": n_fresh,
        "batch/n_replay": len(g["ages"]) - n_fresh,
        "batch/zero_adv_frac": float((g["adv"] == 0).float().mean()),
        "batch/rows_skipped": sum(r["rows_skipped"] for r in ranks),
        "buffer/size": sum(r["buffer"] for r in ranks),
        "replay/age_max": int(rep_ages.max()) if len(rep_ages) else 0,
        "replay/age_mean": float(rep_ages.float().mean()) if len(rep_ages) else 0.0,
        "replay/age_hist": torch.bincount(g["ages"], minlength=n_age).tolist(),
        "loss/pg": sum(r["loss"] for r in ranks),
        "loss/clip_fraction": float(clip_by_age.sum()) / n_tokens,
        "loss/ratio_mean": float(ratio_by_age.sum()) / n_tokens,
        "loss/clip_fraction_by_age": (clip_by_age / per_age).tolist(),
        "loss/ratio_mean_by_age": (ratio_by_age / per_age).tolist(),
        "loss/kl": sum(r["kl"] for r in ranks),
        "loss/skipped": int(skipped),
        "tokens/generated": int(g["lengths"].sum()),
        "tokens/trained": sum(r["trained"] for r in ranks),
        "tokens/forwarded": int(forwarded),
    }
    signum = next((r["stop"] for r in ranks if r["stop"] is not None), None)
    return metrics, len(g["rewards"]), skipped, signum
