"""The inspection and upkeep commands: `config show`, `plan`, `toy-base build|verify`.

None of them trains or evaluates. cli.py registers them on the `replaygrpo` app: the two
sub-apps with `add_typer`, `plan` as a command of its own.
"""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer
from omegaconf import OmegaConf

from replaygrpo.cli_common import CONF_DIR, HYDRA_ARGS, fail, to_config
from replaygrpo.config import ConfigError

config_app = typer.Typer(help="Inspect the composed config.", no_args_is_help=True)
toy_base_app = typer.Typer(help="The toy lab's shipped base models: build, verify.", no_args_is_help=True)


@config_app.command("show", context_settings=HYDRA_ARGS)
def config_show(ctx: typer.Context) -> None:
    """Print the composed config for Hydra OVERRIDES (validated), e.g. `config show method=replay`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            dcfg = compose(config_name="config", overrides=list(ctx.args))
        to_config(dcfg)
    except (HydraException, ConfigError) as err:
        fail(str(err).strip())
    except Exception as err:  # OmegaConf validation errors name the key
        fail(f"{type(err).__name__}: {err}")
    typer.echo(OmegaConf.to_yaml(dcfg))


@toy_base_app.command("build")
def toy_base_build(names: Annotated[Optional[list[str]], typer.Argument(
        help="Bases to (re)build (default: all of replaygrpo.toymodel.BASES).")] = None) -> None:
    """Train shipped toy bases from their recipes into replaygrpo/toybase/NAME and record their SHA-256s.

    Changes the lab's base models: commit the new files and manifest together."""
    from replaygrpo.toymodel import BASES, ToyBaseError, build_bases

    try:
        entries = build_bases(names or list(BASES))
    except ToyBaseError as err:
        fail(str(err))
    for name, entry in entries.items():
        typer.echo(f"{name}: sha256 {entry['sha256']}")


@toy_base_app.command("verify")
def toy_base_verify(names: Annotated[Optional[list[str]], typer.Argument(help="Bases to check (default: all).")] = None) -> None:
    """Check shipped toy bases against the SHA-256s in replaygrpo/toybase/manifest.json."""
    from replaygrpo.toymodel import ToyBaseError, read_manifest, verify_base

    for name in names or sorted(read_manifest()):
        try:
            _, digest = verify_base(name)
        except ToyBaseError as err:
            fail(str(err))
        typer.echo(f"{name}: ok, sha256 {digest}")


def plan(
    ctx: typer.Context,
    world_size: Annotated[Optional[int], typer.Option(help="Ranks (torchrun processes); default WORLD_SIZE or 1.")] = None,
    gpu_memory_gb: Annotated[Optional[float], typer.Option(help="GB per GPU; default plan.gpu_memory_gb.")] = None,
) -> None:
    """Per-GPU memory budget of the config for Hydra OVERRIDES (e.g. `plan experiment=paper_4b_replay
    --world-size 2`): weights, gradients, optimiser, activations, logits, KV cache, sync, per phase.
    Exits 2 naming the key to change when it cannot fit."""
    from unittest.mock import patch

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from replaygrpo.memplan import make_plan

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    try:  # validated for that world size (prompts_per_step must divide by it)
        with patch.dict(os.environ, {"WORLD_SIZE": str(world)}), \
                initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            cfg = to_config(compose(config_name="config", overrides=list(ctx.args)))
        result = make_plan(cfg, world, gpu_memory_gb)
    except (HydraException, ConfigError) as err:
        fail(str(err).strip())
    typer.echo(result.render())
    if not result.fits:
        fail(f"does not fit: {result.fix}")
