"""`replaygrpo eval`, `table` and `plot` through the CLI on a freshly trained toy run."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from replaygrpo.cli import app
from replaygrpo.config import Config
from replaygrpo.model import ModelLoadError, resolve_model_path
from replaygrpo.records import Rollout
from replaygrpo.toymodel import build_model, build_tokenizer
from replaygrpo.records import UpdateBatch
from replaygrpo.update import UpdateOptions, update_step
from tests.conftest import toy_overrides

runner = CliRunner()
BENCHMARKS = ["math500", "aime24", "amc23", "minerva_math", "olympiadbench"]


def test_eval_table_plot_from_a_run_dir(tmp_path, shared_data):
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={run}")]).exit_code == 0
    outs = {}
    for name, temp in (("greedy", "0"), ("sampled", "1.0")):
        outs[name] = tmp_path / name
        res = runner.invoke(app, ["eval", f"model.name_or_path={run}", f"eval.data_root={shared_data / 'benchmarks'}",
                                  "eval.limit=3", "eval.k=2", "eval.max_new_tokens=8", f"eval.temperature={temp}",
                                  f"eval.out={outs[name]}", f"hydra.run.dir={tmp_path / ('hydra_' + name)}"])
        assert res.exit_code == 0, res.output
        results = json.loads((outs[name] / "results.json").read_text())
        assert results["k"] == 2 and set(results["benchmarks"]) == set(BENCHMARKS)
        for b in BENCHMARKS:
            lines = (outs[name] / f"{b}.jsonl").read_text().splitlines()
            assert len(lines) == 3 * 2 and results["benchmarks"][b]["n"] == 3
    # Greedy and sampled evals are not one protocol: the table refuses them in one line naming the setting.
    mixed = runner.invoke(app, ["table", str(outs["greedy"]), str(outs["sampled"]), "--baseline", "greedy"])
    assert mixed.exit_code == 2 and len(mixed.output.strip().splitlines()) == 1
    assert mixed.output.startswith("error: refusing to compare runs evaluated differently: temperature (0.0 in "
                                   "'greedy', 1.0 in 'sampled')") and "--allow-mixed" in mixed.output
    # Accuracy is 0 on real benchmarks for the toy model, so AES against it is undefined: the table says so.
    table = runner.invoke(app, ["table", str(outs["greedy"]), str(outs["sampled"]), "--baseline", "greedy",
                                "--format", "md", "--allow-mixed", "--aes-a", "2", "--aes-c", "4",
                                "--bootstrap", "50", "--reference", "greedy"])
    assert table.exit_code == 0, table.output
    assert "MIXED eval settings" in table.output and "alpha=2.0, beta=3.0, gamma=4.0" in table.output
    assert "(50 resamples)" in table.output
    assert "greedy" in table.output and "sampled" in table.output and "AES" in table.output
    assert "n/a" in table.output  # AES against a 0-accuracy baseline is undefined, and said so
    bad = runner.invoke(app, ["table", str(outs["greedy"]), "--baseline", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
    plots = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "plots")])
    assert plots.exit_code == 0, plots.output
    assert list((tmp_path / "plots").glob("*.png"))


def test_model_dir_without_weights_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="holds no weights"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))


def test_non_finite_gradient_skips_the_step():
    tok = build_tokenizer()
    model = build_model(Config(), len(tok), tok.eos_token_id)
    model.lm_head.register_forward_hook(lambda module, args, out: out * float("nan"))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    r = Rollout(torch.tensor([1, 2], dtype=torch.int32), torch.tensor([3, 4], dtype=torch.int32),
                torch.zeros(2), 1.0, 1.0, 0, 0, 0)
    result = update_step(model, opt, UpdateBatch([r], num_fresh=1),
                         UpdateOptions(pad_id=0, temperature=1.0, clip_low=0.2, clip_high=0.2, agg="token_mean",
                                       old_logprobs="trainer", tis_cap=None, token_budget=64, grad_clip=1.0))
    assert result.skipped
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


# A `toy` warm start's shape keys describe the base, not the run dir the eval loads: they must not reach it.
TINY_TOY = ("model.name_or_path=toy", "model.hidden_size=32", "model.num_heads=2", "model.num_kv_heads=1",
            "model.num_layers=1", "model.intermediate_size=64", "model.warmstart_steps=0")


@pytest.mark.parametrize("model", [(), TINY_TOY], ids=["shipped_base", "toy_warm_start"])
def test_eval_after_train_writes_run_dir_eval(tmp_path, model):
    run = tmp_path / "run"
    out = runner.invoke(app, ["train", *toy_overrides(f"hydra.run.dir={run}", "trainer.steps=1", "eval_after_train=true",
                                                      "eval.benchmarks=[toy]", "eval.limit=16", "eval.max_new_tokens=8",
                                                      *model)])
    assert out.exit_code == 0, out.output
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["benchmarks"]["toy"]["n"] == 16
    assert len((run / "eval" / "toy.jsonl").read_text().splitlines()) == 16
