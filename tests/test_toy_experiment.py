"""The toy experiment's arms (conf/experiment/toy_*.yaml) and its script's commands."""
from __future__ import annotations

import subprocess

import pytest
from hydra import compose, initialize_config_dir

from replaygrpo.config import register_configs
from replaygrpo.methods import METHODS
from replaygrpo.validation import to_config
from tests.conftest import REPO


register_configs()


def arm(name: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return to_config(compose(config_name="config", overrides=[f"experiment={name}"]))


@pytest.mark.parametrize("name,method,tau,ratio,batch", [
    ("toy_grpo", "grpo", None, None, 16), ("toy_grpo_2x", "grpo", None, None, 32),
    ("toy_naive_replay", "naive_replay", None, 1.0, 16), ("toy_replay", "replay", 2, 1.0, 16),
    ("toy_lev_replay", "replay", 4, 0.5, 16), ("toy_lev_naive_replay", "naive_replay", None, 0.5, 16),
    ("toy_lev_tau_none", "replay", None, 0.5, 16),
])
def test_arms(name, method, tau, ratio, batch) -> None:
    cfg = arm(name)
    assert cfg.method.name == method and cfg.trainer.prompts_per_step == batch
    if method != "grpo":  # the age bound as the method applies it (naive replay has none)
        assert cfg.replay.replay_ratio == ratio and METHODS.get(method).build(cfg.replay).age_bound == tau


def test_leverage_ablations_change_one_thing() -> None:
    ref = arm("toy_lev_replay")
    for name, key, value in [("toy_lev_alpha0", "alpha", 0.0), ("toy_lev_unit_group", "unit", "group"),
                             ("toy_lev_no_anchor", "anchor", False)]:
        cfg = arm(name)
        assert getattr(cfg.replay, key) == value != getattr(ref.replay, key)
        assert (cfg.replay.tau_max, cfg.replay.replay_ratio) == (4, 0.5)
    no_clip = arm("toy_lev_no_clip")
    assert no_clip.loss.clip_high >= 1000 and no_clip.loss.clip_low > 0.99 and no_clip.replay.tau_max == 4


def test_script_dry_run_prints_both_regimes_in_seed_lanes() -> None:
    out = subprocess.run(["bash", str(REPO / "scripts" / "toy_experiment.sh"), "--dry-run"], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin", "SEEDS": "0,1,2"}).stdout.splitlines()
    trains = [line for line in out if " train --multirun " in line]
    assert len(trains) == 4  # 2 regimes x 2 lanes; the seed is the outer sweep
    assert [t.split(" train --multirun ")[1].split()[0] for t in trains] == ["seed=0,2", "seed=1"] * 2
    assert all(t.startswith("OMP_NUM_THREADS=1 ") for t in trains)
    paper, leverage = trains[0], trains[2]
    assert "trainer.lr=1e-4" in paper
    assert "experiment=toy_grpo,toy_grpo_mb,toy_grpo_2x,toy_naive_replay,toy_replay " in paper
    assert "trainer.lr=3e-4" in leverage and "toy_lev_no_clip" in leverage and "toy_grpo_mb" in leverage
    compares = [line for line in out if " compare " in line]
    assert len(compares) == 6 and all("lane0 " in c and "lane1 " in c for c in compares)
    assert sum("--baseline experiment=toy_grpo " in c for c in compares) == 4
    assert sum("--x time" in c for c in compares) == 2
    assert any("--baseline experiment=toy_lev_replay " in c and c.endswith("toy_experiment_leverage_vs_replay.md")
               for c in compares)


def test_mini_batch_arm_is_grpo_with_four_steps() -> None:
    cfg = arm("toy_grpo_mb")
    assert cfg.method.name == "grpo" and cfg.trainer.mini_batches == 4 and cfg.trainer.prompts_per_step == 16
