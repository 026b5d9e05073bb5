"""What every `replaygrpo` command shares: the config dir, the config check, the user errors, `fail`.

Kept apart from cli.py so the command modules (cli_tools.py) and cli.py import it without
importing each other.
"""
from __future__ import annotations

from pathlib import Path

import typer
from omegaconf import DictConfig

from replaygrpo.config import Config, ConfigError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def to_config(dcfg: DictConfig) -> Config:
    """The schema's checks, then the registered variants' (imported here: they load torch)."""
    from replaygrpo.variants import load_config

    return load_config(dcfg)


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can fix (a config key, a file, a run dir): printed as one line, no traceback."""
    from replaygrpo.data.train_sets import DataError
    from replaygrpo.model import ModelLoadError
    from replaygrpo.checkpoint import CheckpointError
    from replaygrpo.rundir import RunDirError
    from replaygrpo.train import Interrupted, TrainingDiverged
    from replaygrpo.toymodel import ToyBaseError

    errors: list[type[BaseException]] = [ConfigError, DataError, ModelLoadError, RunDirError, CheckpointError,
                                         Interrupted, TrainingDiverged, ToyBaseError]
    try:
        from replaygrpo.evaluate import EvalError

        errors.append(EvalError)
    except ImportError:
        pass
    return tuple(errors)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)
