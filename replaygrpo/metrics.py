"""metrics.jsonl (one JSON object per step, flushed as written), optional wandb, the progress bar."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
