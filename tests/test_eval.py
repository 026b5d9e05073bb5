"""run_eval on a tiny random Qwen3 over the real benchmark files, resume, regrade, metrics."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from replaygrpo.config import Config
from replaygrpo.evaluate import RESULTS, SCHEMA, EvalError, pass_at_k, regrade, run_eval, summarize
from replaygrpo.toymodel import build_model, build_tokenizer

DATA_ROOT = Path(os.environ.get("REPLAYGRPO_DATA_ROOT", Path(__file__).parents[2] / "shared/data/benchmarks"))
FIVE = ["math500", "aime24", "amc23", "minerva_math", "olympiadbench"]
FIELDS = {"problem_id", "sample", "prompt", "response", "extracted", "gold", "tolerance", "correct", "tokens",
          "finish_reason"}


# ---------------------------------------------------------------- metrics by hand
def test_pass_at_k_hand_values() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - 35 / 210)  # 1 - C(7,4)/C(10,4)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(3, 1, 3) == 1.0  # n == k: any correct
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_summarize_avg_at_k_and_pass_at_k() -> None:
    rows = [("a", 0, True, 10), ("a", 1, False, 20), ("b", 0, False, 30), ("b", 1, False, 40),
            ("c", 0, True, 5), ("c", 1, True, 15)]
    recs = [{"problem_id": p, "sample": s, "correct": c, "tokens": t} for p, s, c, t in rows]
    out = summarize(recs, k=2)
    assert out["n"] == 3
    assert out["accuracy"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert out["pass_at_k"] == pytest.approx((1 + 0 + 1) / 3)
    assert out["mean_tokens"] == pytest.approx(20.0)


def test_summarize_pass_at_several_k_from_one_set_of_samples() -> None:
    # 4 samples per problem: a has 1 correct, b has 3. pass@1 is the accuracy; pass@2 is
    # 1 - C(n-c, 2) / C(n, 2): a 1 - 3/6, b 1 - 0/6.
    marks = {"a": [1, 0, 0, 0], "b": [1, 1, 0, 1]}
    recs = [{"problem_id": p, "sample": s, "correct": bool(c), "tokens": 1} for p, m in marks.items()
            for s, c in enumerate(m)]
    out = summarize(recs, k=4, pass_k=[1, 2, 8])
    assert out["k"] == 4 and set(out["pass_at"]) == {"1", "2"}  # 8 > n: not estimable
    assert out["pass_at"]["1"] == pytest.approx(out["accuracy"]) == pytest.approx((0.25 + 0.75) / 2)
    assert out["pass_at"]["2"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["pass_at_k"] == 1.0


# ---------------------------------------------------------------- run_eval
@pytest.fixture(scope="module")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    cfg = Config()
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads = 32, 1, 2
    cfg.model.num_kv_heads, cfg.model.intermediate_size = 1, 64
    tok = build_tokenizer()
    torch.manual_seed(0)
    build_model(cfg, len(tok), tok.eos_token_id).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _cfg(model: Path, out: Path, benchmarks: list[str], **eval_kw: object) -> Config:
    cfg = Config()
    cfg.model.name_or_path, cfg.device = str(model), "cpu"
    e = cfg.eval
    e.benchmarks, e.out, e.data_root = benchmarks, str(out), str(DATA_ROOT)
    e.limit, e.k, e.max_new_tokens, e.temperature, e.grader_workers, e.batch_size = 2, 2, 8, 1.0, 0, 3
    for key, value in eval_kw.items():
        setattr(e, key, value)
    return cfg


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(not DATA_ROOT.is_dir(), reason=f"benchmark files not found at {DATA_ROOT}")
def test_run_eval_five_benchmarks(toy_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    results = run_eval(_cfg(toy_model_dir, out, FIVE, grader_workers=1))  # real worker processes
    assert results == json.loads((out / RESULTS).read_text())
    assert results["schema"] == SCHEMA and results["k"] == 2
    assert results["model"] == str(toy_model_dir.resolve())
    assert results["config"]["max_new_tokens"] == 8 and results["config"]["template"] == "qwen_math"
    assert list(results["benchmarks"]) == FIVE
    for name in FIVE:
        b = results["benchmarks"][name]
        assert b["n"] == 2 and 0 <= b["accuracy"] <= b["pass_at_k"] <= 1 and 0 < b["mean_tokens"] <= 8
        recs = _lines(out / f"{name}.jsonl")
        assert len(recs) == 4 and all(set(r) == FIELDS for r in recs)
        assert {(r["problem_id"], r["sample"]) for r in recs} == {(p, s) for p in {r["problem_id"] for r in recs}
                                                                   for s in (0, 1)}
        assert all(r["prompt"].startswith("<|im_start|>system") and r["finish_reason"] in ("stop", "length")
                   for r in recs)
    assert results["average"]["accuracy"] == pytest.approx(sum(b["accuracy"] for b in results["benchmarks"].values()) / 5)


def test_resume_after_interrupted_eval(toy_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cfg = _cfg(toy_model_dir, out, ["toy"], limit=3)
    run_eval(cfg)
    path = out / "toy.jsonl"
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    assert len(lines) == 6 and lines[0].startswith('{"problem_id": "L')
    # A kill mid-write: the first three lines survive, the fourth is cut in half.
    path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    results = run_eval(cfg)
    after = path.read_text().splitlines(keepends=True)
    pairs = [(json.loads(x)["problem_id"], json.loads(x)["sample"]) for x in after]
    assert len(pairs) == len(set(pairs)) == 6  # no duplicate, none missing
    assert after[:3] == lines[:3]  # finished samples were kept, not regenerated
    assert results["benchmarks"]["toy"]["n"] == 3
    assert json.loads((out / RESULTS).read_text())["benchmarks"]["toy"]["n"] == 3


def test_resume_refuses_other_settings(toy_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    run_eval(_cfg(toy_model_dir, out, ["toy"], limit=1))
    with pytest.raises(EvalError, match=r"k: 2 -> 3.*max_new_tokens: 8 -> 4"):
        run_eval(_cfg(toy_model_dir, out, ["toy"], limit=1, k=3, max_new_tokens=4))


@pytest.mark.skipif(not DATA_ROOT.is_dir(), reason=f"benchmark files not found at {DATA_ROOT}")
def test_per_benchmark_samples_resume_after_a_kill(toy_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cfg = _cfg(toy_model_dir, out, ["aime24", "math500"], k=1, k_per_benchmark={"aime24": 3}, pass_k=[1, 2])
    results = run_eval(cfg)
    aime, math500 = results["benchmarks"]["aime24"], results["benchmarks"]["math500"]
    assert (aime["k"], math500["k"]) == (3, 1) and len(_lines(out / "aime24.jsonl")) == 2 * 3
    assert set(aime["pass_at"]) == {"1", "2"} and set(math500["pass_at"]) == {"1"}
    assert results["grader"]["profile"] == "default" and results["grader"]["rel_tol"] == 1e-6
    # Killed mid-write on aime24: a rerun fills exactly the missing samples.
    path = out / "aime24.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + lines[4][:10])
    run_eval(cfg)
    pairs = [(r["problem_id"], r["sample"]) for r in _lines(path)]
    assert len(pairs) == len(set(pairs)) == 6 and path.read_text().splitlines(keepends=True)[:4] == lines[:4]
    cfg.eval.grader = "qwen_math"
    with pytest.raises(EvalError, match=r"grader_settings: .*replaygrpo regrade --grader"):
        run_eval(cfg)


def test_regrade_under_another_grader_profile(toy_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    run_eval(_cfg(toy_model_dir, out, ["toy"], limit=1, k=1))
    path = out / "toy.jsonl"
    (rec,) = _lines(path)
    rec["response"], rec["gold"] = "so we get 50 apples", "50"  # no box: only qwen_math reads the last number
    path.write_text(json.dumps(rec) + "\n")
    assert regrade(out, workers=0)["benchmarks"]["toy"]["accuracy"] == 0.0
    results = regrade(out, workers=0, grader="qwen_math")
    assert results["benchmarks"]["toy"]["accuracy"] == 1.0 and results["grader"]["profile"] == "qwen_math"
    assert json.loads((out / "eval_config.json").read_text())["grader_settings"]["fallback"] == "last_number"
    with pytest.raises(EvalError, match="unknown grader profile 'nope'"):
        regrade(out, workers=0, grader="nope")


def test_toy_recipe_is_refused_and_a_shipped_base_is_evaluated_by_name(tmp_path: Path) -> None:
    cfg = Config()
    cfg.model.name_or_path, cfg.eval.out = "toy", str(tmp_path / "recipe")
    with pytest.raises(EvalError, match="toy lab's warm-start recipe.*toy-strong"):
        run_eval(cfg)
    cfg = _cfg(Path("toy-weak"), tmp_path / "weak", ["toy"], limit=8, k=1, temperature=0.0, max_new_tokens=48)
    cfg.model.name_or_path = "toy-weak"
    results = run_eval(cfg)
    assert results["base_model"]["name"] == "toy-weak" and len(results["base_model"]["sha256"]) == 64
    assert results["benchmarks"]["toy"]["n"] == 8 and 0 < results["benchmarks"]["toy"]["accuracy"] <= 1


def test_unwritable_out_dir(toy_model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a file where a parent dir should be: not writable even as root
    with pytest.raises(EvalError, match="not writable"):
        run_eval(_cfg(toy_model_dir, blocker / "eval", ["toy"]))


def test_malformed_middle_line_is_an_error(toy_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "toy.jsonl").write_text('{"problem_id": "x", "sample": 0}\nnot json\n{"problem_id": "y", "sample": 0}\n')
    with pytest.raises(EvalError, match="toy.jsonl:2"):
        run_eval(_cfg(toy_model_dir, out, ["toy"]))


def test_regrade_rewrites_correctness(toy_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    run_eval(_cfg(toy_model_dir, out, ["toy"], limit=2))
    path = out / "toy.jsonl"
    recs = _lines(path)
    recs[0]["response"] = f"so the sum is \\boxed{{{recs[0]['gold']}}}"  # as if the model got it right
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    results = regrade(out, workers=0, timeout=5.0)
    new = _lines(path)
    assert new[0]["correct"] is True and new[0]["extracted"] == recs[0]["gold"]
    assert [r["response"] for r in new] == [r["response"] for r in recs]
    assert results["benchmarks"]["toy"]["accuracy"] >= 0.25
    assert json.loads((out / RESULTS).read_text()) == results


def test_grading_and_stop_truncation_with_a_scripted_engine(toy_model_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that answers right, then rambles past end-of-text: only the part before it counts."""
    from replaygrpo.rollout import Completion
    from replaygrpo.rollout import engine as engine_mod

    tok = build_tokenizer()

    class Scripted:
        def generate(self, prompts: list[list[int]], params: object) -> list[list[Completion]]:
            out = []
            for ids in prompts:
                expr = tok.decode(ids).split("Question: ")[1].split(" = ?")[0]
                text = f"\\boxed{{{eval(expr)}}}{tok.eos_token}\\boxed{{-1}}"  # toy questions are `a + b`
                new = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.int32)
                out.append([Completion(new, torch.zeros(len(new)), "length")])
            return out

        def close(self) -> None:
            pass

    monkeypatch.setattr(engine_mod, "build_engine", lambda *a, **kw: Scripted())
    results = run_eval(_cfg(toy_model_dir, tmp_path / "eval", ["toy"], limit=3, k=1))
    assert results["benchmarks"]["toy"]["accuracy"] == 1.0
    recs = _lines(tmp_path / "eval" / "toy.jsonl")
    assert all(r["finish_reason"] == "stop" and "-1" not in r["response"] and r["correct"] for r in recs)
