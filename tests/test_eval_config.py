"""The eval keys added for per-benchmark sample counts, pass@k and the grader profile: validation and the presets."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from replaygrpo.cli import CONF_DIR
from replaygrpo.config import Config, ConfigError
from replaygrpo.validation import to_config


def test_paper_presets_use_per_benchmark_sample_counts() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = to_config(compose(config_name="config", overrides=["experiment=paper_4b_replay"]))
    e = cfg.eval
    assert (e.k, e.k_per_benchmark, e.pass_k) == (4, {"aime24": 32, "amc23": 32}, [1, 4, 32])
    assert e.grader == "default" and e.max_new_tokens == 8192


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.k_per_benchmark.update(aime25=8), r"`eval.k_per_benchmark` has the bad value 'aime25'"),
        (lambda e: e.k_per_benchmark.update(aime24=0), r"`eval.k_per_benchmark.aime24` has the bad value 0"),
        (lambda e: e.pass_k.append(64), r"`eval.pass_k` has the bad value \[64\]; allowed: integers in \[1, 32\]"),
    ],
)
def test_eval_sample_keys_are_validated(change, message: str) -> None:
    cfg = Config()
    cfg.eval.k_per_benchmark = {"aime24": 32}
    change(cfg.eval)
    with pytest.raises(ConfigError, match=message):
        to_config(cfg)
