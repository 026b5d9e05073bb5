"""AES by hand, the results table in three formats from hand-written eval dirs, and plots."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from replaygrpo.evaluate import build_results, summarize
from replaygrpo.report import mean_std
from replaygrpo.report.aes import AESError, aes, aes_of_average, aes_per_benchmark, mean_aes
from replaygrpo.report.plot import make_plots
from replaygrpo.report.table import MixedSettingsError, TableError, make_table

GRADER = {"rel_tol": 1e-06, "exact_integers": True, "percent": "sign", "fallback": "math", "join_boxes": True,
          "item_tolerance": True}


# ---------------------------------------------------------------- seed statistics
def test_mean_std_nan_policies() -> None:
    nan = float("nan")
    # mean 2, sample std sqrt(((1-2)^2 + (3-2)^2) / 1) = sqrt(2)
    assert mean_std([1.0, 3.0], nan="propagate") == pytest.approx((2.0, 2 ** 0.5))
    assert mean_std([1.0, nan, 3.0], nan="omit") == pytest.approx((2.0, 2 ** 0.5))
    assert all(x != x for x in mean_std([1.0, nan, 3.0], nan="propagate"))  # both nan
    mean, std = mean_std([5.0, nan], nan="omit")  # one value left: no std
    assert mean == 5.0 and std != std
    assert all(x != x for x in mean_std([], nan="omit"))
    with pytest.raises(ValueError, match="nan policy 'skip'"):
        mean_std([1.0], nan="skip")  # type: ignore[arg-type]


# ---------------------------------------------------------------- AES
def test_aes_both_branches() -> None:
    # dL = (100 - 80) / 100 = 0.2, dA = (0.6 - 0.5) / 0.5 = 0.2 >= 0: 0.2 + 3 * 0.2
    assert aes(0.6, 80, 0.5, 100) == pytest.approx(0.8)
    # dL = -0.2, dA = -0.2 < 0: -0.2 - 5 * 0.2
    assert aes(0.4, 120, 0.5, 100) == pytest.approx(-1.2)
    assert aes(0.5, 100, 0.5, 100) == 0.0
    assert aes(0.6, 80, 0.5, 100, alpha=2, beta=1) == pytest.approx(0.6)


def test_aes_undefined_baseline() -> None:
    with pytest.raises(AESError, match="baseline accuracy is 0"):
        aes(0.5, 10, 0.0, 10)
    with pytest.raises(AESError, match="baseline mean length is 0"):
        aes(0.5, 10, 0.5, 0)
    with pytest.raises(AESError, match="^aime24: "):
        mean_aes({"aime24": 0.1}, {"aime24": 5}, {"aime24": 0.0}, {"aime24": 5})


def test_aes_two_conventions() -> None:
    acc, length = {"a": 87.5, "b": 25.0}, {"a": 80.0, "b": 160.0}
    base_acc, base_len = {"a": 50.0, "b": 50.0}, {"a": 100.0, "b": 200.0}
    per = aes_per_benchmark(acc, length, base_acc, base_len)
    assert per["a"] == pytest.approx(0.2 + 3 * 0.75) and per["b"] == pytest.approx(0.2 - 5 * 0.5)
    assert mean_aes(acc, length, base_acc, base_len) == pytest.approx((2.45 - 2.3) / 2)
    # averages: acc 56.25 vs 50 (dA = 0.125), length 120 vs 150 (dL = 0.2)
    assert aes_of_average(acc, length, base_acc, base_len) == pytest.approx(0.2 + 3 * 0.125)


# ---------------------------------------------------------------- table
def write_eval(out: Path, correct: dict[str, list[bool]], tokens: dict[str, int], model: str = "m",
               **settings_kw: object) -> Path:
    """An eval output dir with k=1: per-sample JSONLs and the results.json they imply."""
    out.mkdir(parents=True)
    settings = {"model": model, "k": 1, "k_per_benchmark": {}, "benchmarks": list(correct), "temperature": 0.6,
                "top_p": 0.95, "max_new_tokens": 8192, "template": "qwen_math", "grader": "default",
                "grader_settings": GRADER, **settings_kw}
    summaries = {}
    for bench, marks in correct.items():
        k = settings["k_per_benchmark"].get(bench, 1)  # type: ignore[attr-defined]
        recs = [{"problem_id": str(i), "sample": s, "prompt": "q", "response": "r", "extracted": None, "gold": "1",
                 "correct": c, "tokens": tokens[bench], "finish_reason": "stop"}
                for i, c in enumerate(marks) for s in range(k)]
        (out / f"{bench}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        summaries[bench] = summarize(recs, k)
    (out / "results.json").write_text(json.dumps(build_results(settings, summaries)))
    return out


def write_run(run: Path, seed: int, method: str, correct: dict[str, list[bool]], tokens: dict[str, int]) -> Path:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nmodel:\n  name: toy\nmethod:\n  name: {method}\nreplay:\n  tau_max: 2\n"
        f"logger:\n  wandb: false\n")
    write_eval(run / "eval", correct, tokens, model=str(run))
    return run


@pytest.fixture()
def dirs(tmp_path: Path) -> dict[str, Path]:
    base = write_eval(tmp_path / "base_model", {"math500": [1, 1, 0, 0], "aime24": [1, 0]},
                      {"math500": 100, "aime24": 200})
    tokens = {"math500": 80, "aime24": 160}
    s0 = write_run(tmp_path / "replay_s0", 0, "replay", {"math500": [1, 1, 1, 0], "aime24": [1, 0]}, tokens)
    s1 = write_run(tmp_path / "replay_s1", 1, "replay", {"math500": [1, 1, 1, 1], "aime24": [0, 0]}, tokens)
    return {"base": base, "s0": s0, "s1": s1}


def test_table_markdown(dirs: dict[str, Path]) -> None:
    md = make_table([dirs["base"], dirs["s0"], dirs["s1"]], baseline="base_model", reference=str(dirs["base"]))
    lines = md.splitlines()
    assert lines[0] == ("Eval protocol (shared by every row): samples per problem 1 on each benchmark; problems "
                        "MATH500 4, AIME24 2; temperature 0.6; top_p 0.95; max_new_tokens 8192; template qwen_math; "
                        "grader default (exact_integers=True, fallback=math, item_tolerance=True, join_boxes=True, "
                        "percent=sign, rel_tol=1e-06).")
    assert lines[1] == ""
    lines = lines[2:]
    assert lines[0].startswith("| Method | Seeds | MATH500 | AIME24 | Avg | Tokens | AES (of avg) | AES (mean) |")
    assert lines[1].startswith("|:---|---:")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:4]}
    assert set(rows) == {"base_model", "toy/replay"}  # the two seeds are one row
    replay = [c.strip() for c in rows["toy/replay"].strip("|").split("|")]
    # math500 75/100 -> 87.5 ± 17.7; aime24 50/0 -> 25.0 ± 35.4; Avg 62.5/50 -> 56.2 ± 8.8; tokens 120
    assert replay[1:8] == ["2", "87.5 ± 17.7", "25.0 ± 35.4", "56.2 ± 8.8", "120 ± 0", "0.575", "0.075"]
    # per-problem diffs: math500 [0, 0, 1, .5] -> .375, aime24 [-.5, 0] -> -.25; Avg +6.25 points
    assert replay[8].startswith("+6.2 [") and rows["base_model"].rstrip(" |").endswith("ref")
    assert "AES vs 'base_model'" in md


def test_table_csv_and_latex(dirs: dict[str, Path]) -> None:
    inputs = [dirs["base"] / "results.json", dirs["s0"], dirs["s1"]]
    table = list(csv.DictReader(io.StringIO(make_table(inputs, str(dirs["base"]), "base_model", fmt="csv"))))
    row = next(r for r in table if r["method"] == "toy/replay")
    assert float(row["math500"]) == pytest.approx(87.5) and float(row["avg_std"]) == pytest.approx(8.8388, abs=1e-3)
    assert float(row["aes_of_avg"]) == pytest.approx(0.575) and float(row["aes_mean"]) == pytest.approx(0.075)
    assert float(row["delta_vs_ref"]) == pytest.approx(6.25)
    assert float(row["ci_low"]) <= 6.25 <= float(row["ci_high"])

    tex = make_table(inputs, "base_model", "base_model", fmt="latex")
    assert all(s in tex for s in ("\\toprule", "\\midrule", "\\bottomrule", "base\\_model", "$\\pm$", "\\%"))
    assert "base_model" not in tex.replace("base\\_model", "")


def test_table_without_reference_and_bootstrap_is_seeded(dirs: dict[str, Path]) -> None:
    md = make_table([dirs["base"], dirs["s0"]], baseline="base_model")
    assert "Δ" not in md
    a = make_table([dirs["base"], dirs["s0"], dirs["s1"]], "base_model", "toy/replay")
    assert a == make_table([dirs["base"], dirs["s0"], dirs["s1"]], "base_model", "toy/replay")


def test_table_differing_keys_name_rows(dirs: dict[str, Path], tmp_path: Path) -> None:
    other = write_run(tmp_path / "replay_tau4", 0, "replay", {"math500": [1, 0, 0, 0], "aime24": [1, 1]},
                      {"math500": 90, "aime24": 90})
    cfg = other / ".hydra" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("tau_max: 2", "tau_max: 4"))
    md = make_table([dirs["base"], dirs["s0"], dirs["s1"], other], "base_model")
    assert "toy/replay (replay.tau_max=2)" in md and "toy/replay (replay.tau_max=4)" in md


def test_table_errors(dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"baseline 'nope' is not among the inputs; rows: 'base_model', 'toy/replay'"):
        make_table([dirs["base"], dirs["s0"]], "nope")
    bad = tmp_path / "old" / "results.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"model": "m", "benchmarks": {}}))
    with pytest.raises(TableError, match=rf"{bad}: not a replaygrpo.results/1 results file; missing key\(s\): schema, k, average"):
        make_table([bad], "old")
    (dirs["s0"] / "eval" / "aime24.jsonl").unlink()
    with pytest.raises(TableError, match="aime24.jsonl is missing"):
        make_table([dirs["base"], dirs["s0"]], "base_model", "base_model")
    with pytest.raises(TableError, match="unknown table format"):
        make_table([dirs["base"]], "base_model", fmt="html")


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"temperature": 0.0}, r"temperature \(0.6 in 'base_model', 0.0 in 'other'\)"),
        ({"max_new_tokens": 2048}, r"max_new_tokens \(8192 in 'base_model', 2048 in 'other'\)"),
        ({"top_p": 1.0}, "top_p"),
        ({"template": "qwen_boxed"}, "template"),
        ({"k_per_benchmark": {"aime24": 4}}, r"samples per problem on aime24 \(1 in 'base_model', 4 in 'other'\)"),
        ({"grader": "qwen_math"}, r"grader \(default \(.*\) in 'base_model', qwen_math \(.*\) in 'other'\)"),
    ],
)
def test_table_refuses_mixed_eval_settings(dirs: dict[str, Path], tmp_path: Path, settings: dict, named: str) -> None:
    other = write_eval(tmp_path / "other", {"math500": [1, 0, 0, 0], "aime24": [1, 1]}, {"math500": 9, "aime24": 9},
                       **settings)
    with pytest.raises(MixedSettingsError, match="^refusing to compare runs evaluated differently: " + named) as err:
        make_table([dirs["base"], other], "base_model")
    assert "\n" not in str(err.value) and "--allow-mixed" in str(err.value)
    md = make_table([dirs["base"], other], "base_model", allow_mixed=True)
    assert md.splitlines()[1].startswith("MIXED eval settings, compared anyway (--allow-mixed): ")


def test_table_refuses_other_problem_sets(dirs: dict[str, Path], tmp_path: Path) -> None:
    fewer = write_eval(tmp_path / "fewer", {"math500": [1, 0], "aime24": [1, 1]}, {"math500": 9, "aime24": 9})
    with pytest.raises(MixedSettingsError, match=r"problems in math500 \(4 in 'base_model', 2 in 'fewer'\)"):
        make_table([dirs["base"], fewer], "base_model")
    partial = write_eval(tmp_path / "partial", {"math500": [1, 0, 0, 0]}, {"math500": 9})
    with pytest.raises(MixedSettingsError, match=r"benchmarks \(aime24, math500 in 'base_model', math500 in 'partial'"):
        make_table([dirs["base"], partial], "base_model")


# ---------------------------------------------------------------- plots
def fake_run(run: Path, seed: int, method: str, slope: float) -> Path:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  name: toy\nmethod:\n  name: {method}\n")
    lines = []
    for step in range(12):
        rec = {"step": step, "rollouts/generated": 64 * (step + 1) // (2 if method == "replay" else 1),
               "reward/mean": slope * step + 0.01 * seed, "response/tokens_mean": 10 + step}
        if step % 4 == 0:
            rec["eval/accuracy"] = 0.1 + slope * step
        if method == "replay":
            rec["replay/age_hist"] = [0, 5, 3] if step else [0]
        lines.append(json.dumps(rec))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 12, "rew')  # cut-off last line
    return run


def test_make_plots(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / "r0", 0, "replay", 0.05), fake_run(tmp_path / "r1", 1, "replay", 0.04),
            fake_run(tmp_path / "g0", 0, "grpo", 0.03)]
    paths = make_plots(runs, tmp_path / "plots")
    assert [p.name for p in paths] == ["reward.png", "eval_accuracy.png", "response_length.png", "replay_age.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_table_cli_refuses_in_one_line_and_takes_aes_and_bootstrap_options(dirs: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from replaygrpo.cli import app

    greedy = write_eval(tmp_path / "greedy", {"math500": [1, 0, 0, 0], "aime24": [1, 1]}, {"math500": 9, "aime24": 9},
                        temperature=0.0)
    runner = CliRunner()
    mixed = runner.invoke(app, ["table", str(dirs["base"]), str(greedy), "--baseline", "base_model"])
    assert mixed.exit_code == 2 and len(mixed.output.strip().splitlines()) == 1
    assert mixed.output.startswith("error: refusing to compare runs evaluated differently: temperature (0.6 in "
                                   "'base_model', 0.0 in 'greedy')")
    ok = runner.invoke(app, ["table", str(dirs["base"]), str(greedy), "--baseline", "base_model", "--allow-mixed",
                             "--aes-a", "2", "--aes-c", "4", "--bootstrap", "50", "--reference", "base_model"])
    assert ok.exit_code == 0, ok.output
    assert "MIXED eval settings" in ok.output and "alpha=2.0, beta=3.0, gamma=4.0" in ok.output
    assert "(50 resamples)" in ok.output
