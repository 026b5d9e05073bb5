"""In-training eval on real data: a fixed benchmark subset, evaluated greedily every N steps."""
from __future__ import annotations

import json

from hydra import compose, initialize_config_dir
from typer.testing import CliRunner

from replaygrpo.cli import CONF_DIR, app
from replaygrpo.data.train_sets import heldout_set
from replaygrpo.variants import load_config
from tests.conftest import toy_overrides

runner = CliRunner()


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return load_config(compose(config_name="config", overrides=list(overrides)))


def test_benchmark_subset_is_fixed_and_the_same_for_every_seed(shared_data):
    root = f"eval.data_root={shared_data / 'benchmarks'}"
    a = heldout_set(cfg_of("data=math_train", "trainer.eval_benchmark=math500", "trainer.eval_size=50", root, "seed=0"))
    b = heldout_set(cfg_of("data=math_train", "trainer.eval_benchmark=math500", "trainer.eval_size=50", root, "seed=7"))
    assert [p.id for p in a] == [p.id for p in b] and len({p.id for p in a}) == 50
    assert heldout_set(cfg_of("data=math_train", root)) == []  # null: no in-training eval on real data
    whole = heldout_set(cfg_of("data=math_train", "trainer.eval_benchmark=math500", "trainer.eval_size=10000", root))
    assert len(whole) == 500


def test_training_on_real_data_logs_benchmark_accuracy(tmp_path, shared_data):
    train = tmp_path / "train.jsonl"
    row = {"prompt": [{"role": "user", "content": "What is 1 + 1?"}], "reward_model": {"ground_truth": "2"}}
    train.write_text("".join(json.dumps(row) + "\n" for _ in range(8)))
    run = tmp_path / "run"
    out = runner.invoke(app, ["train", *toy_overrides(
        f"hydra.run.dir={run}", "data=math_train", "data.template=toy", f"data.path={train}",
        "trainer.eval_benchmark=math500", f"eval.data_root={shared_data / 'benchmarks'}", "trainer.eval_size=6",
        "trainer.eval_every=1", "trainer.eval_max_new_tokens=8")])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("eval/accuracy" in r and "eval/tokens_mean" in r for r in rows)
    assert not any(k.startswith("eval/accuracy/L") for r in rows for k in r)  # levels are the toy lab's
    assert json.loads((run / "summary.json").read_text())["start_accuracy"] is not None


def test_unknown_eval_benchmark_names_the_key(tmp_path):
    out = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={tmp_path}", "data=math_train",
                                                        "trainer.eval_benchmark=gsm8k")])
    assert out.exit_code == 2 and "trainer.eval_benchmark" in out.output and "math500" in out.output


def test_eval_benchmark_on_toy_data_is_refused(tmp_path):
    out = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={tmp_path}", "trainer.eval_benchmark=math500")])
    assert out.exit_code == 2 and "trainer.eval_benchmark" in out.output and "data=toy" in out.output
