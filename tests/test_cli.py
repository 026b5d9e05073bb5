"""The CLI end to end through Typer's CliRunner: train, multirun, config show, bad input."""
from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from replaygrpo.cli import app
from tests.conftest import toy_overrides

runner = CliRunner()


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


REQUIRED = ["step", "rollouts/generated", "reward/mean", "response/tokens_mean", "batch/n_fresh",
            "batch/n_replay", "buffer/size", "replay/age_max", "replay/age_mean", "loss/clip_fraction",
            "loss/ratio_mean", "tokens/generated", "tokens/trained", "time/generate", "time/grade",
            "time/update", "time/sync", "time/step"]


def test_help_is_typers():
    out = runner.invoke(app, ["train", "--help"])
    assert out.exit_code == 0 and "OVERRIDES" in out.output
    for cmd in ("eval", "table", "plot", "regrade", "config"):
        assert runner.invoke(app, [cmd, "--help"]).exit_code == 0


def test_train_two_steps_writes_run_dir(tmp_path):
    run = tmp_path / "run"
    out = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={run}")])
    assert out.exit_code == 0, out.output
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    for key in REQUIRED:
        assert key in rows[-1], key
    assert rows[-1]["rollouts/generated"] == 2 * 4 * 4
    assert "eval/accuracy" in rows[-1] and 0.0 <= rows[-1]["eval/accuracy"] <= 1.0
    assert (run / ".hydra" / "config.yaml").exists()
    assert (run / "final_model" / "model.safetensors").exists()
    # A finished run is never silently overwritten.
    again = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={run}")])
    assert again.exit_code == 2 and "already holds a finished run" in again.output


def test_multirun_writes_one_dir_per_value(tmp_path):
    sweep = tmp_path / "sweep"
    out = runner.invoke(app, ["train", "--multirun", *toy_overrides(f"hydra.sweep.dir={sweep}", "seed=0,1")])
    assert out.exit_code == 0, out.output
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.jsonl"))
    assert len(runs) == 2 and "seed=0" in runs[0] and "seed=1" in runs[1]


def test_cfg_job_prints_config(tmp_path):
    out = runner.invoke(app, ["train", "method=replay", "--cfg", "job"])
    assert out.exit_code == 0 and "tau_max: 2" in out.output


def test_config_show_validates():
    ok = runner.invoke(app, ["config", "show", "method=replay", "replay.tau_max=4"])
    assert ok.exit_code == 0 and "tau_max: 4" in ok.output
    bad = runner.invoke(app, ["config", "show", "replay.alpha=-1"])
    assert bad.exit_code == 2 and "replay.alpha" in bad.output


def test_bad_input_is_one_clear_error(tmp_path):
    bad = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={tmp_path / 'a'}", "loss.clip_low=2")])
    assert bad.exit_code == 2 and "loss.clip_low" in bad.output and "Traceback" not in bad.output
    unknown = runner.invoke(app, ["train", "method=bogus", f"hydra.run.dir={tmp_path / 'b'}"])
    assert unknown.exit_code != 0 and "method/bogus" in unknown.output
    missing = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={tmp_path / 'c'}", "data=math_train",
                                                            f"data.path={tmp_path / 'nope.jsonl'}")])
    assert missing.exit_code == 2 and "nope.jsonl" in missing.output and "does not exist" in missing.output
    broken = tmp_path / "broken.jsonl"
    row = {"prompt": [{"role": "user", "content": "1+1?"}], "reward_model": {"ground_truth": "2"}}
    broken.write_text(json.dumps(row) + "\n{not json\n")
    out = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={tmp_path / 'd'}", "data=math_train",
                                                        f"data.path={broken}")])
    assert out.exit_code == 2 and f"{broken}:2" in out.output


def test_wandb_logger_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    out = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={run}", "logger=wandb", "trainer.steps=1")])
    assert out.exit_code == 0, out.output
    assert list((run / "wandb").glob("offline-run-*"))


def test_invalid_sweep_value_fails_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    out = runner.invoke(app, ["train", "--multirun", *toy_overrides(f"hydra.sweep.dir={sweep}", "method=replay",
                                                                     "replay.tau_max=1,-1")])
    assert out.exit_code == 2 and "replay.tau_max=-1" in out.output and "no job was started" in out.output
    assert not sweep.exists()


def test_crashed_job_is_marked_failed_and_the_sweep_goes_on(tmp_path):
    good = tmp_path / "good.jsonl"
    row = {"prompt": [{"role": "user", "content": "What is 1 + 1?"}], "reward_model": {"ground_truth": "2"}}
    good.write_text("".join(json.dumps(row) + "\n" for _ in range(8)))
    sweep = tmp_path / "sweep"
    out = runner.invoke(app, ["train", "--multirun", *toy_overrides(
        f"hydra.sweep.dir={sweep}", "data=math_train", "data.template=toy",
        f"data.path={good},{tmp_path / 'missing.jsonl'}")])
    assert out.exit_code == 0, out.output
    failed = list(sweep.rglob(".failed"))
    finished = list(sweep.rglob("summary.json"))
    assert len(failed) == 1 and "missing.jsonl" in failed[0].read_text()
    assert len(finished) == 1
