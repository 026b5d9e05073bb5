"""`replaygrpo compare` on hand-written multirun dirs: arms, pairing by seed, the AUC, the tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replaygrpo.cli import app
from replaygrpo.report.compare import CompareError, compare_report
from replaygrpo.report.stats import curve_auc

BASE = {"name": "toy-weak", "sha256": "ab" * 32}


def write_run(sweep: Path, method: str, seed: int, evals: list[float], start: float = 0.2,
              per_step: int = 128, finished: bool = True) -> Path:
    job = sweep / f"experiment=toy_{method},seed={seed}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nmodel:\n  name: toy-weak\nmethod:\n  name: {method}\n")
    (job / ".hydra" / "overrides.yaml").write_text(f"- experiment=toy_{method}\n- seed={seed}\n")
    rows = []
    for i, acc in enumerate(evals):
        rows.append({"step": i + 1, "rollouts/generated": per_step * (i + 1), "time/step": 1.0,
                     "tokens/generated": 1000, "replay/eligible": 300,
                     "eval/accuracy": acc, "eval/accuracy/L2": acc + 0.1, "eval/accuracy/L6": acc - 0.1,
                     "eval/tokens_mean": 20.0, "eval/truncated": 0.01})
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (job / "summary.json").write_text(json.dumps({"start_accuracy": start, "final_accuracy": evals[-1],
                                                      "base_model": BASE}))
    return job


def rows(report: str, first: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines()
            if line.startswith(f"| {first}")]


@pytest.fixture
def sweeps(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for seed in range(4):
        write_run(a, "grpo", seed, [0.30, 0.40 + 0.01 * seed, 0.50])
        # replay learns faster (AUC higher) but ends at the same place in 3 of 4 seeds
        write_run(b, "replay", seed, [0.40 + 0.005 * seed, 0.50, 0.50 + 0.002 * seed])
        write_run(b, "naive_replay", seed, [0.30 + 0.001 * seed, 0.40 + 0.01 * seed, 0.50 - 0.001 * seed])
    write_run(b, "replay", 9, [0.1], finished=False)
    return [a, b]


def test_report_pairs_seeds_and_uses_the_auc(sweeps: list[Path]) -> None:
    report = compare_report(sweeps, baseline="experiment=toy_grpo", margin=0.02)
    table = {r[0]: r for r in rows(report, "experiment=")}
    assert set(table) == {"experiment=toy_grpo (baseline)", "experiment=toy_naive_replay", "experiment=toy_replay"}
    expected = [curve_auc([0, 128, 256, 384], [0.2, 0.30, 0.40 + 0.01 * s, 0.50], 384) for s in range(4)]
    assert table["experiment=toy_grpo (baseline)"][2].startswith(f"{100 * sum(expected) / 4:.1f} ± ")
    assert table["experiment=toy_grpo (baseline)"][1] == "4"
    assert "L2 (%)" in report and "L6 (%)" in report
    primary = report.split("**Primary: AUC**")[1].split("**Secondary")[0]
    replay = next(r for r in rows(primary, "experiment=toy_replay"))
    naive = next(r for r in rows(primary, "experiment=toy_naive_replay"))
    assert replay[1] == "4" and replay[-1] == "better"
    assert naive[-1].startswith("equivalent (±2 points)")
    assert "Holm over 2 arms" in primary and "TOST margin ±2 points" in primary
    assert "experiment=toy_replay,seed=9 (unfinished)" in report
    assert f"toy-weak {'ab' * 6}" in report


def test_budget_is_the_smallest_any_run_reached(tmp_path: Path) -> None:
    write_run(tmp_path / "s", "grpo", 0, [0.3, 0.5])
    write_run(tmp_path / "s", "grpo", 1, [0.3, 0.5])
    write_run(tmp_path / "s", "replay", 0, [0.4, 0.6, 0.9], per_step=64)  # reaches only 192 rollouts
    write_run(tmp_path / "s", "replay", 1, [0.4, 0.6, 0.9], per_step=64)
    report = compare_report([tmp_path / "s"], baseline="grpo")
    assert "common budget 192" in report
    with pytest.raises(CompareError, match="matches 0 arms"):
        compare_report([tmp_path / "s"], baseline="nonesuch")
    with pytest.raises(CompareError, match="unknown --x"):
        compare_report([tmp_path / "s"], baseline="grpo", axis="flops")
    assert "common budget 2 " in compare_report([tmp_path / "s"], baseline="grpo", axis="time")  # 1 s x 2 steps


def test_cli_compare_writes_the_report(sweeps: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    res = CliRunner().invoke(app, ["compare", *map(str, sweeps), "--baseline", "replay", "--out", str(out)])
    assert res.exit_code == 2 and "matches 2 arms" in res.output and "experiment=toy_naive_replay" in res.output
    res = CliRunner().invoke(app, ["compare", *map(str, sweeps), "--baseline", "experiment=toy_grpo", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("# Toy experiment report")


def test_secondary_reads_every_arm_at_the_common_budget(tmp_path: Path) -> None:
    # A bigger batch (256 rollouts a step) ends far higher, but at the others' budget (256) it is lower.
    for seed in range(4):
        write_run(tmp_path / "s", "grpo", seed, [0.40 + 0.01 * seed, 0.50 + 0.01 * seed])
        write_run(tmp_path / "s", "grpo_2x", seed, [0.30 + 0.02 * seed, 0.90, 0.95], per_step=256)
    report = compare_report([tmp_path / "s"], baseline="experiment=toy_grpo", margin=0.02)
    table = {r[0]: r for r in rows(report.split("**Primary")[0], "experiment=")}
    assert table["experiment=toy_grpo_2x"][3].startswith("33.0 ± ")  # its accuracy at 256 rollouts
    assert table["experiment=toy_grpo_2x"][4].startswith("95.0")  # its last eval, shown, not tested
    secondary = report.split("**Secondary: accuracy at the common budget**")[1]
    assert next(r for r in rows(secondary, "experiment=toy_grpo_2x"))[-1] == "worse"
