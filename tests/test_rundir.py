"""One training process per run directory: a second is refused naming the holder; a SIGKILLed holder leaves nothing stuck."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replaygrpo.config import Config
from replaygrpo.rundir import LOCK_FILE, RunDirError, claim_run_dir, release_run_dir
from tests.test_resume import env, steps_done, train_cmd

HOLD = """
import sys, time
from pathlib import Path
from replaygrpo.rundir import RunDirLock
RunDirLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_directory_is_refused_until_its_holder_is_killed(tmp_path):
    proc = holder(tmp_path)
    try:
        with pytest.raises(RunDirError, match=f"in use by another training run \\(pid {proc.pid} on host "):
            claim_run_dir(tmp_path, Config())
        info = json.loads((tmp_path / LOCK_FILE).read_text())
        assert info["pid"] == proc.pid and info["started"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    claim_run_dir(tmp_path, Config())  # the kernel dropped the dead holder's lock
    claim_run_dir(tmp_path, Config())  # the holder itself may claim again (a second train in one session)
    other = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], env=env(), capture_output=True, text=True)
    assert other.returncode != 0 and "in use by another training run" in other.stderr
    release_run_dir(tmp_path)
    holder(tmp_path).kill()  # released: another process takes it


def test_a_directory_refused_for_its_content_is_not_kept_locked(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError, match="resume=auto"):
        claim_run_dir(tmp_path, Config())
    holder(tmp_path).kill()


@pytest.mark.slow
def test_second_train_is_refused_then_resume_after_sigkill_proceeds(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(train_cmd(run, steps=400), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while steps_done(run) < 2 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended early"
        second = subprocess.run(train_cmd(run, "resume=auto", steps=400), env=env(), capture_output=True, text=True)
        assert second.returncode == 2, second.stderr[-2000:]
        message = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(message) == 1 and f"pid {first.pid} on host" in message[0] and "Traceback" not in second.stderr
        assert first.poll() is None, "the refused run disturbed the first"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    done = steps_done(run)
    resumed = subprocess.run(train_cmd(run, "resume=auto", steps=done + 2), env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, done + 3))
