"""Atomic checkpoints that resume a run exactly: weights, optimiser, scheduler, buffer, RNGs, data position.

A checkpoint is written to a temporary directory, every file fsynced, a manifest of
sha256 checksums written last, then the directory is renamed into place: a crash leaves
either a complete checkpoint or a temporary directory that is ignored. Weights and the
buffer are safetensors, state is JSON; the optimiser's state dict goes through
`torch.save` and is only ever read back with `weights_only=True` (tensors and plain
containers, no arbitrary pickle).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from replaygrpo.report import flatten

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
MANIFEST = "manifest.json"
# Keys that may change between a run and its resumption.
RESUMABLE_KEYS = ("trainer.steps", "checkpoint.", "resume", "logger.", "overwrite", "eval_after_train",
                  "trainer.grader_workers", "cache_dir", "eval.")


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    meta = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def incompatible_keys(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved, current)} for values that differ, ignoring those a resume may change."""
    a, b = flatten(saved), flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k.startswith(p) for p in RESUMABLE_KEYS)}


def save_checkpoint(run_dir: Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, buffer: Any, state: dict[str, Any], replay_gen: torch.Generator,
                    config: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep`."""
    root = run_dir / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    save_file(weights, tmp / "model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    rng_tensors, rng_meta = rng_state()
    rng_tensors["replay_gen"] = replay_gen.get_state()
    save_file(rng_tensors, tmp / "rng.safetensors")
    meta: dict[str, Any] = {"step": step, "state": state, "rng": rng_meta, "config": config}
    if buffer is not None:
        buf_tensors, buf_meta = buffer.state_dict()
        save_file(buf_tensors, tmp / "buffer.safetensors")
        meta["buffer"] = buf_meta
    (tmp / "state.json").write_text(json.dumps(meta))
    files = sorted(p for p in tmp.iterdir() if p.is_file())
    for p in files:
        _fsync(p)
    (tmp / MANIFEST).write_text(json.dumps({p.name: _sha256(p) for p in files}))
    _fsync(tmp / MANIFEST)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / CKPT_DIR
    return sorted(root.glob("step-*")) if root.is_dir() else []


def verify(path: Path) -> str | None:
    """None if the checkpoint matches its manifest, else what is wrong."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest (partial write)"
    try:
        sums = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            return f"missing {name}"
        if _sha256(f) != digest:
            return f"checksum mismatch in {name}"
    return None


def find_resume_point(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: `auto` = newest valid in run_dir (corrupt ones reported, skipped)."""
    if resume != "auto":
        path = Path(resume)
        problem = verify(path) if path.is_dir() else "not a directory"
        if problem:
            raise CheckpointError(f"cannot resume from {path}: {problem}.")
        return path
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    meta = json.loads((path / "state.json").read_text())
    meta["weights"] = load_file(path / "model.safetensors")
    meta["optim"] = torch.load(path / "optim.pt", weights_only=True, map_location="cpu")
    meta["rng_tensors"] = load_file(path / "rng.safetensors")
    if (path / "buffer.safetensors").exists():
        meta["buffer_tensors"] = load_file(path / "buffer.safetensors")
    return meta


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines after `step` (and a torn last line), so no step appears twice."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row.get("step", 0) > step:
            break
        keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)
