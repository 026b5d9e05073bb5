"""Nothing lost: a run killed with SIGKILL resumes to the same metrics and weights; corrupt checkpoints are skipped."""
from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from safetensors.torch import load_file

from replaygrpo.checkpoint import find_resume_point, incompatible_keys, list_checkpoints, truncate_metrics
from replaygrpo.config import Config
from tests.conftest import toy_overrides

STEPS = 6


def train_cmd(run_dir: Path, *extra: str, steps: int = STEPS) -> list[str]:
    overrides = [o for o in toy_overrides() if not o.startswith(("trainer.steps=", "trainer.eval_every="))]
    return [sys.executable, "-m", "replaygrpo", "train", *overrides,
            f"hydra.run.dir={run_dir}", f"trainer.steps={steps}", "trainer.eval_every=2",
            "method=replay", "checkpoint.every=1", "checkpoint.keep=2", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def comparable(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def steps_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(train_cmd(full), check=True, env=env(), capture_output=True)
    kill_after = random.Random(os.getpid()).randint(1, STEPS - 2)
    proc = subprocess.Popen(train_cmd(killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while steps_done(killed) < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert steps_done(killed) < STEPS, "the run finished before it could be killed"
    resumed = subprocess.run(train_cmd(killed, "resume=auto"), env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable(killed) == comparable(full)
    a = load_file(full / "final_model" / "model.safetensors")
    b = load_file(killed / "final_model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_sigterm_checkpoints_and_corrupt_checkpoint_is_skipped(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(run), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while steps_done(run) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "resume=auto" in err
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 2
    newest, previous = ckpts[-1], ckpts[-2]
    (newest / "model.safetensors").write_bytes(b"garbage")
    assert find_resume_point(run, "auto") == previous
    resumed = subprocess.run(train_cmd(run, "resume=auto"), env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checksum mismatch" in resumed.stdout + resumed.stderr
    assert [r["step"] for r in comparable(run)] == list(range(1, STEPS + 1))


def test_resume_with_a_different_config_names_the_keys(tmp_path):
    run = tmp_path / "run"
    subprocess.run(train_cmd(run, steps=2), check=True, env=env(), capture_output=True)
    out = subprocess.run(train_cmd(run, "resume=auto", "replay.alpha=0.5", steps=3),
                         env=env(), capture_output=True, text=True)
    assert out.returncode == 2 and "replay.alpha" in out.stderr and "Traceback" not in out.stderr


def test_config_keys_that_may_change_and_keys_older_checkpoints_lack():
    current = asdict(Config())
    current["method"]["name"] = "replay"  # a method that reads replay.alpha
    older = copy.deepcopy(current)
    del older["model"]["attn_implementation"]  # written before the key existed: reads as its default
    del older["trainer"]["update_layout"]
    assert incompatible_keys(older, current) == {}
    current["model"]["attn_implementation"] = "eager"
    current["trainer"]["micro_batch_tokens"] = 1024  # cost only: may change on resume
    current["replay"]["alpha"] = 0.5
    assert incompatible_keys(older, current) == {"model.attn_implementation": (None, "eager"),
                                                 "replay.alpha": (1.0, 0.5)}


def test_replay_keys_the_method_does_not_read_may_differ():
    """Only the replay.* keys METHODS[name].reads are compared: grpo reads none, naive replay no alpha."""
    saved = asdict(Config())
    current = copy.deepcopy(saved)
    current["replay"].update(alpha=0.0, unit="group", tau_max=None, capacity=7)
    assert incompatible_keys(saved, current) == {}  # grpo
    saved["method"]["name"] = current["method"]["name"] = "naive_replay"
    assert incompatible_keys(saved, current) == {"replay.capacity": (saved["replay"]["capacity"], 7)}


def test_naive_replay_checkpoint_resumes_whatever_unread_replay_keys_hold(tmp_path):
    """A naive-replay checkpoint written when its preset also set replay.unit/tau_max/alpha
    (keys it never read) resumes under today's preset; a key it reads still refuses, by name."""
    run = tmp_path / "run"

    def cmd(*extra: str, steps: int) -> list[str]:
        return [o for o in train_cmd(run, *extra, steps=steps) if o != "method=replay"] + ["method=naive_replay"]

    subprocess.run(cmd("replay.unit=group", "replay.tau_max=null", "replay.alpha=0", steps=2),
                   check=True, env=env(), capture_output=True)
    out = subprocess.run(cmd("resume=auto", steps=3), env=env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [r["step"] for r in comparable(run)] == [1, 2, 3]
    out = subprocess.run(cmd("resume=auto", "replay.capacity=64", steps=4), env=env(), capture_output=True, text=True)
    assert out.returncode == 2 and "replay.capacity" in out.stderr and "Traceback" not in out.stderr
    assert "replay.alpha" not in out.stderr and "replay.unit" not in out.stderr


def test_truncate_metrics_drops_later_steps_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(1, 6)) + '{"step": 6, "rew')
    truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
