"""Sweep reports from hand-written multirun dirs, the launcher/sweeper configs, and the sweep scripts."""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replaygrpo.report.sweep import collect_runs, run_headline, sweep_plot, sweep_table
from tests.conftest import REPO, toy_overrides

CONF_DIR = str(REPO / "conf")


def write_job(sweep: Path, tau: int | None, seed: int, evals: list[float], status: str = "finished",
              bench: tuple[float, float] | None = None) -> Path:
    """A job dir as `replaygrpo train --multirun` leaves it: .hydra files, metrics.jsonl, summary.json."""
    tau_s = "null" if tau is None else str(tau)
    job = sweep / f"method=replay,replay.tau_max={tau_s},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    tau_y = "null" if tau is None else tau
    (job / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nmodel:\n  name: toy\nmethod:\n  name: replay\nreplay:\n  tau_max: {tau_y}\n  alpha: 1.0\n")
    (job / ".hydra" / "overrides.yaml").write_text(
        f"- method=replay\n- replay.tau_max={tau_s}\n- seed={seed}\n- trainer.steps={len(evals)}\n")
    rows = [{"step": i + 1, "rollouts/generated": 16 * (i + 1), "reward/mean": 0.1 * (i + 1), "time/step": 1.0 + i,
             "eval/accuracy": acc, "eval/tokens_mean": 5.0} for i, acc in enumerate(evals)]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status == "finished":
        (job / "summary.json").write_text(json.dumps({"start_accuracy": 0.0, "final_accuracy": evals[-1],
                                                      "steps": len(evals), "rollouts_generated": 16 * len(evals)}))
    elif status == "failed":
        (job / "cli.log").write_text("[INFO] step 1\nTraceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    if bench is not None:
        (job / "eval").mkdir()
        results = {"schema": "replaygrpo.results/1", "model": str(job), "k": 1,
                   "benchmarks": {"math500": {"n": 500, "accuracy": bench[0], "mean_tokens": bench[1]}},
                   "average": {"accuracy": bench[0], "mean_tokens": bench[1]}}
        (job / "eval" / "results.json").write_text(json.dumps(results))
    return job


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """tau_max in {1, 2} x seed in {0, 1}, plus a failed (tau 2, seed 2) and an unfinished (tau 1, seed 2) job."""
    sweep = tmp_path / "sweep"
    write_job(sweep, 1, 0, [0.1, 0.5, 0.6, 0.7])  # last 3: 0.6
    write_job(sweep, 1, 1, [0.2, 0.6, 0.7, 0.8])  # last 3: 0.7
    write_job(sweep, 2, 0, [0.3, 0.7, 0.8, 0.9])  # last 3: 0.8
    write_job(sweep, 2, 1, [0.4, 0.8, 0.9, 1.0])  # last 3: 0.9
    write_job(sweep, 2, 2, [0.5], status="failed")
    write_job(sweep, 1, 2, [0.5, 0.5], status="unfinished")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # what Hydra writes at the sweep root
    return sweep


def md_rows(table: str) -> list[list[str]]:
    lines = [x for x in table.splitlines() if x.startswith("|")]
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines[2:]]


def test_collect_runs_statuses(grid: Path) -> None:
    runs = {r.name: r for r in collect_runs(grid)}
    assert len(runs) == 6
    assert runs["method=replay,replay.tau_max=2,seed=2"].status == "failed"
    assert runs["method=replay,replay.tau_max=1,seed=2"].status == "unfinished"
    assert sum(r.status == "finished" for r in runs.values()) == 4
    run = runs["method=replay,replay.tau_max=1,seed=0"]
    assert run.config["replay.tau_max"] == 1 and run.overrides["seed"] == "0" and len(run.metrics) == 4
    (grid / "method=replay,replay.tau_max=1,seed=2" / ".failed").write_text("")
    assert {r.name: r for r in collect_runs(grid)}["method=replay,replay.tau_max=1,seed=2"].status == "failed"


def test_table_two_rows_with_seed_means(grid: Path) -> None:
    table = sweep_table(grid, ["replay.tau_max"])
    rows = md_rows(table)
    assert [r[0] for r in rows] == ["1", "2"]
    # tau 1: last-3 means 0.6 and 0.7 -> 65.0 ± 7.1 (sample std); final accuracy 0.7, 0.8 -> 75.0 ± 7.1
    assert rows[0][1:4] == ["2", "65.0 ± 7.1", "75.0 ± 7.1"]
    assert rows[1][1:4] == ["2", "85.0 ± 7.1", "95.0 ± 7.1"]
    assert rows[0][5] == "2.50"  # median s/step of 1, 2, 3, 4
    assert rows[0][-1] == "0/1" and rows[1][-1] == "1/0"  # failed/unfinished
    assert "method=replay,replay.tau_max=2,seed=2 (failed)" in table
    assert "method=replay,replay.tau_max=1,seed=2 (unfinished)" in table
    assert sweep_table(grid, "replay.tau_max", window=1).count("75.0 ± 7.1") == 2  # headline = final eval


def test_table_formats(grid: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(sweep_table(grid, ["replay.tau_max"], fmt="csv"))))
    assert [r["replay.tau_max"] for r in rows] == ["1", "2"]
    assert float(rows[0]["headline"]) == pytest.approx(0.65) and float(rows[1]["headline"]) == pytest.approx(0.85)
    assert rows[0]["unfinished"] == "1" and rows[0]["not_finished_jobs"] == "method=replay,replay.tau_max=1,seed=2"
    latex = sweep_table(grid, ["replay.tau_max"], fmt="latex")
    assert "\\begin{tabular}" in latex and "65.0 $\\pm$ 7.1" in latex and "replay.tau\\_max" in latex
    with pytest.raises(ValueError, match="unknown table format"):
        sweep_table(grid, ["replay.tau_max"], fmt="html")


def test_unknown_key_lists_swept_keys(grid: Path) -> None:
    with pytest.raises(ValueError, match=r"replay\.tau_mx.*swept keys: replay\.tau_max, seed, trainer\.steps"):
        sweep_table(grid, ["replay.tau_mx"])


def test_null_sorts_last_and_group_choices_work(tmp_path: Path) -> None:
    for tau in (None, 10, 2):
        write_job(tmp_path, tau, 0, [0.5])
    assert [r[0] for r in md_rows(sweep_table(tmp_path, "replay.tau_max"))] == ["2", "10", "none"]
    # `method` is a config group choice: not in config.yaml, found in the overrides.
    assert [r[0] for r in md_rows(sweep_table(tmp_path, "method"))] == ["replay"]
    assert "Rows pool runs that also differ in: replay.tau_max" in sweep_table(tmp_path, "method")


def test_benchmark_columns_and_aes(tmp_path: Path) -> None:
    for tau, bench in ((1, (0.5, 100.0)), (2, (0.6, 80.0))):
        for seed in (0, 1):
            write_job(tmp_path, tau, seed, [0.5], bench=bench)
    table = sweep_table(tmp_path, ["replay.tau_max"], baseline="tau_max=1")
    rows = md_rows(table)
    assert rows[0][-3:] == ["50.0 ± 0.0", "100", "0.000"]
    # dL = 0.2, dA = +0.2: 0.2 + 3 * 0.2
    assert rows[1][-3:] == ["60.0 ± 0.0", "80", "0.800"]
    assert "AES" in table.splitlines()[0]
    with pytest.raises(ValueError, match="baseline '7' is not a row"):
        sweep_table(tmp_path, ["replay.tau_max"], baseline="7")


def test_plot_writes_pngs(grid: Path, tmp_path: Path) -> None:
    paths = sweep_plot(grid, ["replay.tau_max"], tmp_path / "plots")
    assert [p.name for p in paths] == ["accuracy_by_replay.tau_max.png", "accuracy_vs_rollouts_by_replay.tau_max.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_headline(grid: Path) -> None:
    assert run_headline(grid / "method=replay,replay.tau_max=1,seed=0") == pytest.approx(0.6)
    assert run_headline(grid / "nope") is None


# ---------------------------------------------------------------- launcher and sweeper configs
def compose_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    from replaygrpo.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_slurm_launcher_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = compose_hydra("hydra/launcher=slurm").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.partition is None
    assert launcher.cpus_per_task >= 1 and launcher.mem_gb >= 1 and launcher.timeout_min >= 60
    assert launcher.array_parallelism >= 1 and launcher.name == "replaygrpo"
    assert compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher.partition == "gpu"
    assert compose_hydra("hydra/launcher=slurm_local").hydra.launcher._target_.endswith("LocalLauncher")


def test_optuna_sweeper_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweeper = compose_hydra("hydra/sweeper=optuna_replay").hydra.sweeper
    assert sweeper.direction == "maximize" and set(sweeper.params) == {"replay.replay_ratio", "replay.alpha"}


# ---------------------------------------------------------------- scripts
def test_reproduce_dry_run_lists_both_stages(tmp_path: Path) -> None:
    env = {**os.environ, "SEEDS": "0,1", "SWEEP_ROOT": str(tmp_path / "paper")}
    out = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_paper.sh"), "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    pilot = [x for x in lines if x.startswith("job pilot ")]
    grid = [x for x in lines if x.startswith("job grid ")]
    assert len(pilot) == 2 * 2 and all("0.6b" in j and "eval_after_train=false" in j for j in pilot)
    assert {j.split("lr=")[1].split()[0] for j in pilot} == {"1e-6", "2.5e-6"}
    assert len(grid) == 3 * 5 * 2  # sizes x arms x seeds
    assert any("4b" in j and "naive_replay" in j and "seed=1" in j and "experiment=paper_4b_naive_replay" in j
               for j in grid)
    assert any(" grpo_mb " in j and "trainer.mini_batches=4" in j for j in grid)
    assert any(" grpo_compute " in j and "trainer.steps=625" in j for j in grid)  # replay's GPU-hours: 500 x 1.25
    assert any(x.startswith("pilot: 4 jobs") and "GPU-hours" in x for x in lines)
    assert any(x.startswith("grid: 30 jobs") and "GPU-hours" in x for x in lines)
    assert "pilot_gate.py" in out.stdout
    assert not (tmp_path / "paper").exists()  # nothing launched
    default = subprocess.run(["bash", str(REPO / "scripts" / "reproduce_paper.sh")], capture_output=True, text=True,
                             env={**os.environ, "DRY_RUN": "1"}, timeout=60)
    assert default.returncode == 0 and sum(x.startswith("job grid ") for x in default.stdout.splitlines()) == 45


def _pilot_run(root: Path, method: str, lr: float, start: float | None, final: float | None, skipped: int = 0) -> None:
    job = root / f"experiment=paper_0.6b_{method},trainer.lr={lr}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"method:\n  name: {method}\ntrainer:\n  lr: {lr}\n  mini_batches: 1\n")
    (job / "metrics.jsonl").write_text("")
    if final is not None or start is not None:
        (job / "summary.json").write_text(json.dumps({"start_accuracy": start, "final_accuracy": final,
                                                      "skipped_steps": skipped}))


def test_pilot_gate_keeps_the_better_rate_where_every_arm_learned(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("pilot_gate", REPO / "scripts" / "pilot_gate.py")
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    main = gate.main

    for method, lr, start, final in [("grpo", 1e-6, 0.30, 0.35), ("replay", 1e-6, 0.30, 0.37),
                                     ("grpo", 2.5e-6, 0.30, 0.45), ("replay", 2.5e-6, 0.30, 0.44)]:
        _pilot_run(tmp_path / "ok", method, lr, start, final)
    assert main([str(tmp_path / "ok")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "lr=2.5e-06"
    # A diverged (skipped steps) or unfinished pilot job closes the gate, naming the job.
    for method, lr, start, final, skipped in [("grpo", 1e-6, 0.30, 0.35, 0), ("replay", 1e-6, 0.30, 0.37, 0),
                                              ("grpo", 2.5e-6, 0.30, 0.45, 3)]:
        _pilot_run(tmp_path / "bad", method, lr, start, final, skipped)
    assert main([str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "3 non-finite steps" in err and "no pilot job for replay at lr 2.5e-06" in err
    # No rate at which every arm improved: closed.
    for method, lr, start, final in [("grpo", 1e-6, 0.30, 0.29), ("replay", 1e-6, 0.30, 0.37),
                                     ("grpo", 2.5e-6, 0.30, 0.45), ("replay", 2.5e-6, 0.30, 0.20)]:
        _pilot_run(tmp_path / "flat", method, lr, start, final)
    assert main([str(tmp_path / "flat")]) == 1
    assert "at no learning rate" in capsys.readouterr().err


def test_toy_tau_sweep_dry_run() -> None:
    out = subprocess.run(["bash", str(REPO / "scripts" / "toy_tau_sweep.sh"), "--dry-run"], capture_output=True,
                         text=True, env={**os.environ, "SEEDS": "0", "STEPS": "2"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "replay.tau_max=0,1,2,4,8,null" in out.stdout and "trainer.steps=2" in out.stdout


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_multirun_to_table_end_to_end(tmp_path: Path) -> None:
    from replaygrpo.cli import app

    sweep = tmp_path / "sweep"
    args = toy_overrides("trainer.eval_every=1", "method=replay", "replay.tau_max=1,2", "seed=0,1",
                         f"hydra.sweep.dir={sweep}")
    out = CliRunner().invoke(app, ["train", "--multirun", *args])
    assert out.exit_code == 0, out.output
    runs = collect_runs(sweep)
    assert len(runs) == 4 and all(r.status == "finished" for r in runs)
    rows = md_rows(sweep_table(sweep, ["replay.tau_max"]))
    assert [r[0] for r in rows] == ["1", "2"] and all(r[1] == "2" for r in rows)
    assert len(sweep_plot(sweep, ["replay.tau_max"], tmp_path / "plots")) == 2


@pytest.mark.slow
def test_submitit_local_runs_two_jobs(tmp_path: Path) -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher is not installed (pip install -e '.[cluster]')")
    from replaygrpo.cli import app

    sweep = tmp_path / "sweep"
    args = toy_overrides("hydra/launcher=slurm_local", "hydra.launcher.timeout_min=10", "seed=0,1",
                         f"hydra.sweep.dir={sweep}")
    out = CliRunner().invoke(app, ["train", "--multirun", *args])
    assert out.exit_code == 0, out.output
    assert [r.status for r in collect_runs(sweep)] == ["finished", "finished"]


@pytest.mark.slow
def test_submitit_job_of_two_tasks_trains_as_two_processes(tmp_path: Path) -> None:
    """hydra/launcher=slurm with tasks_per_node=N (one task per GPU) runs one job as N ranks."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher is not installed (pip install -e '.[cluster]')")
    from replaygrpo.cli import app

    sweep = tmp_path / "sweep"
    args = toy_overrides("hydra/launcher=slurm_local", "hydra.launcher.tasks_per_node=2",
                         "hydra.launcher.timeout_min=10", "method=replay", "checkpoint.every=1", "seed=0",
                         f"hydra.sweep.dir={sweep}")
    out = CliRunner().invoke(app, ["train", "--multirun", *args])
    assert out.exit_code == 0, out.output
    [run] = collect_runs(sweep)
    assert run.status == "finished"
    # Each rank kept its own replay buffer: the job ran as two processes of one group.
    ckpt = run.path / "checkpoints" / "step-00000001"
    assert {"buffer_rank0.safetensors", "buffer_rank1.safetensors"} <= {p.name for p in ckpt.iterdir()}


def test_sweep_validation_counts_a_jobs_tasks_as_ranks(monkeypatch) -> None:
    """A job of N launcher tasks runs as N ranks: its config is checked for that world size
    before anything is submitted (and the launching process's environment is left alone)."""
    from replaygrpo.cli import validate_sweep

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    tp2 = ["engine=vllm", "engine.tensor_parallel_size=2", "trainer.prompts_per_step=4", "seed=0,1"]
    assert validate_sweep(["hydra.launcher.tasks_per_node=2", *tp2]) == 2
    with pytest.raises(SystemExit):  # one task: no second rank for the engine's TP group
        validate_sweep(tp2)
    with pytest.raises(SystemExit):  # 3 ranks cannot share 4 prompts
        validate_sweep(["hydra.launcher.tasks_per_node=3", "trainer.prompts_per_step=4", "seed=0,1"])
    assert "WORLD_SIZE" not in os.environ
