"""The `replaygrpo` command line: thin Typer commands that hand Hydra overrides to Hydra apps.

`train` and `eval` forward their extra arguments to a `@hydra.main` app by setting
sys.argv, so multirun, run/sweep directories and `--cfg job` all behave as in any Hydra
app; `--help` stays Typer's.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import hydra
import typer
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from replaygrpo.cli_after_train import eval_after_train
from replaygrpo.cli_common import CONF_DIR, HYDRA_ARGS, fail, to_config, user_errors
from replaygrpo.cli_tools import config_app, plan, toy_base_app
from replaygrpo.config import register_configs

__all__ = ["CONF_DIR", "app", "eval_after_train", "main", "validate_sweep"]

app = typer.Typer(
    help="Rollout-level advantage-prioritised experience replay for GRPO: train, eval, table, plot.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(config_app, name="config")
app.add_typer(toy_base_app, name="toy-base")
register_configs()
log = logging.getLogger("replaygrpo")


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _train_app(dcfg: DictConfig) -> float | None:
    from hydra.types import RunMode

    from replaygrpo import distributed
    from replaygrpo.report.sweep import run_headline
    from replaygrpo.train import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    distributed.env_from_submitit()  # a SLURM job of N tasks trains as torchrun's N processes
    try:
        cfg = to_config(dcfg)
        summary = train(cfg, run_dir)
        if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 reports and evaluates
            return None
        if cfg.eval_after_train:
            eval_after_train(run_dir, cfg.eval.out or str(run_dir / "eval"), list(hc.overrides.task))
    except Exception as err:  # noqa: BLE001  (a sweep records the failure and goes on)
        from replaygrpo.train import Interrupted

        if isinstance(err, Interrupted):  # pre-empted: checkpointed, stop the whole sweep
            fail(str(err))
        known = isinstance(err, user_errors())
        (run_dir / ".failed").write_text(f"{type(err).__name__}: {err}\n")
        # One rank of several must not return quietly: its peers would wait in their next
        # collective until the timeout. Its non-zero exit ends the job (SLURM_KILL_BAD_EXIT).
        if not sweeping or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            if known:
                fail(str(err))
            raise
        log.error("job %s failed: %s", run_dir.name, err, exc_info=not known)
        return None
    (run_dir / ".failed").unlink(missing_ok=True)  # a resumed run that finished is no longer failed
    start, final = summary["start_accuracy"], summary["final_accuracy"]
    if start is not None:
        typer.echo(f"toy test accuracy: warm start {start:.3f} -> final {final:.3f} "
                   f"({summary['steps']} steps, {summary['rollouts_generated']} rollouts)")
    typer.echo(f"run directory: {summary['run_dir']}")
    return run_headline(run_dir)


def validate_sweep(args: list[str]) -> int:
    """Compose and validate every job of a basic-sweeper multirun before any starts; returns the job count."""
    from unittest.mock import patch

    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    if any(o.startswith(("hydra/sweeper=", "hydra.sweeper")) for o in overrides):
        return 0  # another sweeper chooses its own jobs
    parsed = OverridesParser.create().parse_overrides(overrides)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    # A launcher job of several tasks runs as that many ranks: validate for that world size.
    world = 1
    for key in ("hydra.launcher.nodes=", "hydra.launcher.tasks_per_node="):
        value = next((o[len(key):] for o in overrides if o.startswith(key)), "1")
        world *= int(value) if value.isdigit() else 1
    with patch.dict(os.environ, {"WORLD_SIZE": str(world)} if world > 1 else {}), \
            initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        for job in jobs:
            try:
                to_config(compose(config_name="config", overrides=[o for o in job if not o.startswith("hydra")]))
            except Exception as err:  # noqa: BLE001
                fail(f"sweep job [{' '.join(job)}] is invalid, no job was started: {str(err).strip()}")
    return len(jobs)


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _eval_app(dcfg: DictConfig) -> None:
    from replaygrpo.evaluate import run_eval

    try:
        cfg = to_config(dcfg)
        if cfg.eval.out is None:
            cfg.eval.out = _default_eval_out(cfg.model.name_or_path)
        results = run_eval(cfg)
    except user_errors() as err:
        fail(str(err))
    typer.echo(f"average accuracy {results['average']['accuracy']:.4f} -> {cfg.eval.out}")


def _default_eval_out(name_or_path: str) -> str:
    path = Path(name_or_path)
    if (path / "metrics.jsonl").exists():  # a training run directory
        return str(path / "eval")
    return str(Path(HydraConfig.get().runtime.output_dir) / "eval")


def _run_hydra(app_fn, name: str, args: list[str], multirun: bool) -> None:
    sys.argv = [f"replaygrpo {name}", *args, *(["--multirun"] if multirun else [])]
    app_fn()


@app.command(context_settings=HYDRA_ARGS)
def train(
    ctx: typer.Context,
    multirun: Annotated[bool, typer.Option("--multirun", "-m", help="Sweep over comma-separated values.")] = False,
) -> None:
    """Train with Hydra OVERRIDES, e.g. `method=replay replay.tau_max=4 trainer.steps=100 seed=1`.

    With no argument: the toy lab (tiny Qwen3, arithmetic, GRPO) on the CPU. Groups:
    model=toy|qwen3_0.6b|qwen3_1.7b|qwen3_4b, method=grpo|replay|naive_replay,
    data=toy|math_train|dapo_math, engine=hf|vllm, experiment=PRESET. The run directory is
    hydra.run.dir (or hydra.sweep.dir with --multirun). `--cfg job` prints the config.
    """
    if multirun:
        validate_sweep(list(ctx.args))
    _run_hydra(_train_app, "train", list(ctx.args), multirun)


@app.command("eval", context_settings=HYDRA_ARGS)
def eval_(
    ctx: typer.Context,
    multirun: Annotated[bool, typer.Option("--multirun", "-m", help="Sweep over comma-separated values.")] = False,
) -> None:
    """Evaluate a model on the math benchmarks with Hydra OVERRIDES.

    Keys: model.name_or_path (hub id, model dir or training run dir), eval.benchmarks,
    eval.k (samples per problem), eval.k_per_benchmark (e.g. '{aime24:32,amc23:32}'),
    eval.pass_k, eval.temperature, eval.top_p, eval.max_new_tokens, eval.limit, eval.out,
    eval.data_root (local files in the layout of shared/data/benchmarks), eval.grader
    (default or qwen_math, the Qwen2.5-Math harness's rules). Rerunning with the same
    eval.out resumes.
    """
    _run_hydra(_eval_app, "eval", list(ctx.args), multirun)


@app.command()
def regrade(
    out: Annotated[Path, typer.Argument(help="An eval output directory (holds <benchmark>.jsonl).")],
    workers: Annotated[int, typer.Option(help="Grading processes.")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds per answer.")] = 5.0,
    grader: Annotated[Optional[str], typer.Option(help="Grade under this profile (default, qwen_math) "
                                                      "instead of the recorded settings.")] = None,
) -> None:
    """Re-grade saved responses (after a grader fix, or under another profile) without generating again."""
    from replaygrpo.evaluate import regrade as do_regrade

    try:
        results = do_regrade(out, workers, timeout, grader)
    except user_errors() as err:
        fail(str(err))
    typer.echo(f"average accuracy {results['average']['accuracy']:.4f}")


@app.command()
def table(
    inputs: Annotated[list[Path], typer.Argument(help="results.json files, eval dirs, run dirs, or one sweep dir with --by.")],
    baseline: Annotated[Optional[str], typer.Option(help="Row name or path: the AES baseline.")] = None,
    reference: Annotated[Optional[str], typer.Option(help="Row name or path: differences with a bootstrap CI.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, csv or latex.")] = "md",
    by: Annotated[Optional[str], typer.Option(help="Sweep mode: group a sweep dir's runs by these keys (comma-separated).")] = None,
    window: Annotated[int, typer.Option(help="Sweep mode: average the last N toy evals of each run.")] = 3,
    aes_a: Annotated[float, typer.Option(help="AES weight a of the length saving.")] = 1.0,
    aes_b: Annotated[float, typer.Option(help="AES weight b of an accuracy gain.")] = 3.0,
    aes_c: Annotated[float, typer.Option(help="AES weight c of an accuracy drop.")] = 5.0,
    bootstrap: Annotated[int, typer.Option(help="Paired bootstrap resamples for the CI against --reference.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Compare runs evaluated under different "
                                              "settings (k, temperature, top_p, tokens, template, problems, grader).")]
    = False,
) -> None:
    """One row per method (seeds grouped, mean ± std), per-benchmark accuracy, AES, CIs; or a sweep table.

    Refuses inputs evaluated under different eval settings unless --allow-mixed.
    """
    try:
        if by:
            from replaygrpo.report.sweep import sweep_table

            if len(inputs) != 1:
                fail("--by takes exactly one sweep directory.")
            typer.echo(sweep_table(inputs[0], by.split(","), fmt, window, baseline))
            return
        from replaygrpo.report.table import make_table

        if baseline is None:
            fail("--baseline is required (a row name or input path; AES is computed against it).")
        typer.echo(make_table([str(p) for p in inputs], baseline=baseline, reference=reference, fmt=fmt,
                              alpha=aes_a, beta=aes_b, gamma=aes_c, n_boot=bootstrap, seed=seed,
                              allow_mixed=allow_mixed))
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="Training run directories, or one sweep dir with --by.")],
    out: Annotated[Path, typer.Option(help="Where the PNGs go.")] = Path("plots"),
    by: Annotated[Optional[str], typer.Option(help="Sweep mode: accuracy against these keys (comma-separated).")] = None,
    window: Annotated[int, typer.Option(help="Sweep mode: average the last N toy evals of each run.")] = 3,
) -> None:
    """PNGs of reward and accuracy vs step and vs rollouts generated, lengths, replay ages; or a sweep plot."""
    try:
        if by:
            from replaygrpo.report.sweep import sweep_plot

            paths = sweep_plot(run_dirs[0], by.split(","), out, window)
        else:
            from replaygrpo.report.plot import make_plots

            paths = make_plots(list(run_dirs), out)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    for p in paths:
        typer.echo(str(p))


@app.command()
def compare(
    sweeps: Annotated[list[Path], typer.Argument(help="Hydra multirun sweep dirs (their finished runs are the arms' seeds).")],
    baseline: Annotated[str, typer.Option(help="The arm every other arm is compared with (its name, or a unique part).")],
    x: Annotated[str, typer.Option("--x", help="Budget axis: rollouts, tokens_generated, tokens_forwarded or time.")] = "rollouts",
    margin: Annotated[float, typer.Option(help="Equivalence margin for TOST, as a fraction (0.02 = 2 points).")] = 0.02,
    alpha: Annotated[float, typer.Option(help="Test level.")] = 0.05,
    out: Annotated[Optional[Path], typer.Option(help="Write the markdown report here (else print it).")] = None,
) -> None:
    """Paired-seed report of a toy experiment: AUC of accuracy vs budget (primary), final accuracy,
    per-level accuracy, Holm-corrected paired tests and TOST equivalence against --baseline."""
    from replaygrpo.report.compare import compare_report

    try:
        report = compare_report(list(sweeps), baseline, axis=x, margin=margin, alpha=alpha)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if out is None:
        typer.echo(report)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        typer.echo(str(out))


# `plan` lives in cli_tools.py; registered here, after `compare`, where `--help` lists it.
app.command("plan", context_settings=HYDRA_ARGS)(plan)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
