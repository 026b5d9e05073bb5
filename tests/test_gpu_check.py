"""scripts/gpu_check.sh's vLLM mode on CPU: the script parses, its Python helper judges events."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def helper():
    spec = importlib.util.spec_from_file_location("gpu_check_vllm", REPO / "scripts" / "gpu_check_vllm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")]).returncode == 0


def _events(tracking: float, freed: float) -> list[dict]:
    mem = lambda used: {"allocated": 1.0, "reserved": 2.0, "device_used": used}  # noqa: E731
    ev = [{"event": "engine_build_start", "memory": mem(3.0)},
          {"event": "engine_built", "memory": mem(20.0), "seconds": 30.0, "sleep_mode": True}]
    for step in range(3):
        ev += [{"event": "generate", "memory": mem(20.0), "seconds": 10.0, "prompt_tokens": 6400,
                "completion_tokens": 200_000, "greedy": False},
               {"event": "before_sleep", "memory": mem(20.0)},
               {"event": "after_sleep", "memory": mem(20.0 - freed)},
               {"event": "update", "memory": mem(30.0), "seconds": 8.0, "prompt_tokens": 6400,
                "completion_tokens": 200_000},
               {"event": "after_sync", "memory": mem(20.0), "seconds": 0.5, "sync/logprob_gap": 0.01,
                **({"sync/tracking": tracking, "sync/probe_shift": 0.01} if step else {})}]
    return ev


def test_verdict(helper):
    rows = [{"step": i + 1} for i in range(3)]
    good = helper.summarize(rows, _events(0.95, 15.0), params=600_000_000, peak_flops=989e12, two_rank_rc=0)
    assert good["pass"] and good["sleep_frees_gib"] == 15.0 and good["tracking_min"] == 0.95
    assert good["generation_tokens_per_s"] == pytest.approx(20_000)
    assert good["update_mfu"] == pytest.approx(6 * 6e8 * 206_400 / 8.0 / 989e12)  # prompt tokens counted
    page = helper.render(good)
    assert "**PASS**" in page and "engine tracks the trainer" in page
    stale = helper.summarize(rows, _events(0.0, 0.1), params=600_000_000, peak_flops=989e12, two_rank_rc=1)
    assert not stale["pass"]
    assert stale["verdict"]["engine tracks the trainer (sync/tracking)"] is False
    assert stale["verdict"]["sleep frees memory"] is False and stale["verdict"]["two-rank FSDP2 step"] is False


def test_instrument_wraps_the_engine_and_the_update(helper, tmp_path, monkeypatch):
    from replaygrpo import train as train_mod
    from replaygrpo.rollout import vllm_engine

    cls = vllm_engine.VLLMEngine
    for name in ("__init__", "sleep", "sync_weights", "generate"):
        monkeypatch.setattr(cls, name, getattr(cls, name))  # restored after the test
    monkeypatch.setattr(train_mod, "update", train_mod.update)
    before = cls.sleep
    helper.instrument(helper.Recorder(str(tmp_path / "events.jsonl")))
    assert cls.sleep is not before and train_mod.update.__name__ == "counted_update"
