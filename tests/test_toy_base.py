"""The toy lab's shipped base models: the files match their manifest, a tampered file is refused,
a build is deterministic, and a run records which base it started from."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from replaygrpo.toymodel import (BASE_DIR, BASES, MANIFEST, Recipe, ToyBaseError, build_bases, combined_digest,
                                 file_digests, read_manifest, verify_base)

TINY = {"tiny-a": Recipe(steps=2, batch_size=4, num_train=64, hidden_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, intermediate_size=32),
        "tiny-b": Recipe(steps=4, batch_size=4, num_train=64, hidden_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, intermediate_size=32)}


@pytest.mark.parametrize("name", sorted(BASES))
def test_shipped_base_matches_its_checksum(name: str) -> None:
    manifest = read_manifest()
    assert name in manifest, f"{name} is not built: run `replaygrpo toy-base build {name}` and commit it"
    path, digest = verify_base(name)
    files = file_digests(path)
    assert files == manifest[name]["files"] and combined_digest(files) == digest == manifest[name]["sha256"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    assert manifest[name]["recipe"]["steps"] == BASES[name].steps


def test_shipped_bases_differ_and_are_small() -> None:
    digests = {verify_base(name)[1] for name in BASES}
    assert len(digests) == len(BASES)
    total = sum(p.stat().st_size for p in BASE_DIR.rglob("*") if p.is_file())
    assert total < 8 * 2**20, f"the shipped bases take {total / 2**20:.1f} MiB"


def _copy_bases(tmp_path: Path) -> Path:
    base_dir = tmp_path / "toybase"
    shutil.copytree(BASE_DIR, base_dir)
    return base_dir


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    base_dir = _copy_bases(tmp_path)
    name = sorted(BASES)[0]
    weights = base_dir / name / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ToyBaseError, match=r"model\.safetensors has SHA-256 .* but .*manifest\.json says"):
        verify_base(name, base_dir)
    weights.unlink()
    with pytest.raises(ToyBaseError, match=r"model\.safetensors is missing"):
        verify_base(name, base_dir)
    with pytest.raises(ToyBaseError, match="no toy base of that name"):
        verify_base("toy-nonesuch", base_dir)


def test_build_is_deterministic_and_snapshots_match_their_own_runs(tmp_path: Path) -> None:
    first = build_bases(sorted(TINY), tmp_path / "one", TINY)  # one run of 4 steps, a snapshot at 2
    second = build_bases(["tiny-a"], tmp_path / "two", TINY)  # its own run of 2 steps
    assert first["tiny-a"]["sha256"] == second["tiny-a"]["sha256"]
    assert first["tiny-a"]["sha256"] != first["tiny-b"]["sha256"]
    again = build_bases(["tiny-b"], tmp_path / "three", TINY)
    assert again["tiny-b"]["sha256"] == first["tiny-b"]["sha256"]
    manifest = json.loads((tmp_path / "one" / MANIFEST.name).read_text())
    assert manifest["tiny-b"]["recipe"]["steps"] == 4 and verify_base("tiny-b", tmp_path / "one")[1]


def test_a_run_records_its_base(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from replaygrpo.cli import app
    from tests.conftest import toy_overrides

    run = tmp_path / "run"
    out = CliRunner().invoke(app, ["train", *toy_overrides(f"hydra.run.dir={run}", "trainer.steps=1")])
    assert out.exit_code == 0, out.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["base_model"] == {"name": "toy-strong", "sha256": read_manifest()["toy-strong"]["sha256"]}
    assert set(summary["start_eval"]) >= {"eval/accuracy", "eval/accuracy/L2", "eval/accuracy/L6"}
