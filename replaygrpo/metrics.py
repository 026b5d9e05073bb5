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
from replaygrpo.records import UpdateBatch
from replaygrpo.rollout.step import StepRollouts
from replaygrpo.update import UpdateResult


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


def local_numbers(made: StepRollouts, batch: UpdateBatch, result: UpdateResult, step: int, buffered: int,
                  stop: int | None) -> dict[str, Any]:
    """This rank's per-rollout numbers and counts of one step, for `global_metrics`."""
    ages = [0] * batch.num_fresh + [step - r.birth_step for r in batch.replayed]
    return {
        "rewards": made.rewards, "adv": made.advantages, "ages": torch.tensor(ages, dtype=torch.long),
        "lengths": torch.tensor([c.token_ids.numel() for c in made.completions], dtype=torch.float32),
        "truncated": torch.tensor([c.finish_reason == "length" for c in made.completions], dtype=torch.float64),
        "rows": torch.stack([result.row_clip_count, result.row_ratio_sum, result.row_tokens]),
        "gap": result.row_gap, "tis": result.row_tis,
        "n_fresh": batch.num_fresh, "buffer": buffered, "loss": result.loss, "kl": result.kl,
        "trained": sum(r.completion_ids.numel() for r in batch.rollouts), "skipped": result.skipped,
        "rows_skipped": result.rows_skipped, "stop": stop,
        "positions": sum(r.prompt_ids.numel() + r.num_tokens for r, n in zip(batch.rollouts, result.row_tokens.tolist())
                         if n > 0),
        "scored": result.scored_tokens, "scored_positions": result.scored_positions,
        "optimizer_steps": result.optimizer_steps}


def global_metrics(local: dict[str, Any], age_bound: int | None) -> tuple[dict[str, Any], int, bool, int | None]:
    """This step's metrics over every rank's share, from each rank's `local_numbers`.

    Returns (metrics, rollouts generated, whether any rank skipped the step, the stop
    signal any rank received): all ranks stop together. Each rank's loss and KL are
    already its share of the global mean, so they add up. The by-age lists are
    `age_bound + 1` long (the method's bound; longer if an older rollout occurred).
    """
    ranks = distributed.gather(local)
    g = {k: torch.cat([r[k] for r in ranks]) for k in ("rewards", "adv", "ages", "lengths", "truncated")}
    rows = torch.cat([r["rows"] for r in ranks], dim=1)  # (3, rollouts trained): clips, ratio sums, tokens
    rep_ages = torch.cat([r["ages"][r["n_fresh"]:] for r in ranks])
    n_age = max(age_bound or 0, int(g["ages"].max())) + 1
    clip_by_age, ratio_by_age, tokens_by_age = torch.zeros(3, n_age).index_add_(1, g["ages"], rows)
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
        "positions/forwarded": sum(r["positions"] for r in ranks),
        "tokens/scored": sum(r["scored"] for r in ranks),
        "positions/scored": sum(r["scored_positions"] for r in ranks),
        "optimizer/steps": ranks[0]["optimizer_steps"],
    }
    ages = g["ages"]
    metrics.update(_gap_metrics(torch.cat([r["gap"] for r in ranks], dim=1), ages, n_age))
    if ranks[0]["tis"] is not None:
        metrics.update(_tis_metrics(torch.cat([r["tis"] for r in ranks], dim=1), rows[2], ages, n_age))
    signum = next((r["stop"] for r in ranks if r["stop"] is not None), None)
    return metrics, len(g["rewards"]), skipped, signum


def _ratio(num: torch.Tensor, den: torch.Tensor) -> list[float | None]:
    """num / den elementwise, None where den is 0 (nothing measured)."""
    return [float(n / d) if d > 0 else None for n, d in zip(num.tolist(), den.tolist())]


def _sum_max_by_age(values: torch.Tensor, maxima: torch.Tensor, ages: torch.Tensor,
                    n_age: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, rows) sums and (rows,) non-negative maxima -> per-age sums (k, n_age) and maxima (n_age,)."""
    sums = torch.zeros(values.shape[0], n_age).index_add_(1, ages, values)
    return sums, torch.zeros(n_age).scatter_reduce_(0, ages, maxima, "amax")


def _gap_metrics(gap: torch.Tensor, ages: torch.Tensor, n_age: int) -> dict[str, Any]:
    """gap/*: the engine-vs-trainer log-prob gap (docs/metrics.md); the unsuffixed ones are of
    fresh rollouts (age 0: numerical mismatch only), the lists by age (None: not measured)."""
    (abs_sum, k3_sum, tokens), abs_max = _sum_max_by_age(gap[[0, 2, 3]], gap[1], ages, n_age)
    mean_abs, kl = _ratio(abs_sum, tokens), _ratio(k3_sum, tokens)
    max_abs = [m if t > 0 else None for m, t in zip(abs_max.tolist(), tokens.tolist())]
    return {"gap/mean_abs": mean_abs[0], "gap/max_abs": max_abs[0], "gap/kl": kl[0],
            "gap/mean_abs_by_age": mean_abs, "gap/max_abs_by_age": max_abs, "gap/kl_by_age": kl}


def _tis_metrics(tis: torch.Tensor, tokens: torch.Tensor, ages: torch.Tensor, n_age: int) -> dict[str, Any]:
    """tis/*: the truncated importance-sampling weights of the forwarded tokens, all and by age."""
    (w_sum, truncated, n), w_max = _sum_max_by_age(torch.stack([tis[0], tis[2], tokens]), tis[1], ages, n_age)
    total = float(n.sum())
    return {"tis/weight_mean": float(w_sum.sum()) / total if total else None,
            "tis/weight_max": float(w_max.max()) if total else None,
            "tis/truncated_frac": float(truncated.sum()) / total if total else None,
            "tis/weight_mean_by_age": _ratio(w_sum, n),
            "tis/weight_max_by_age": [m if t > 0 else None for m, t in zip(w_max.tolist(), n.tolist())],
            "tis/truncated_frac_by_age": _ratio(truncated, n)}


def step_metrics(step: int, batch: dict[str, Any], result: UpdateResult, *, rollouts_generated: int,
                 skipped_total: int, lr: float, times: dict[str, float], engine: dict[str, float],
                 evaluation: dict[str, float]) -> dict[str, Any]:
    """The metrics.jsonl row of step `step` (0-based): the batch's global figures, the update's
    grad norm, the learning rate, wall times per phase, the engine's own and any toy eval."""
    return {"step": step + 1, "rollouts/generated": rollouts_generated, **batch, "loss/grad_norm": result.grad_norm,
            "lr": lr, **{f"time/{k}": v for k, v in times.items() if k != "step"}, **engine, **evaluation,
            "loss/skipped_total": skipped_total, "time/step": times["step"]}
