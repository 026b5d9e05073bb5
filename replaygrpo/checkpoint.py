"""Atomic checkpoints that resume a run exactly: weights, optimiser, scheduler, buffer, RNGs, data position.

A checkpoint is written to a temporary directory, every file fsynced, a manifest of
sha256 checksums written last, then the directory is renamed into place: a crash leaves
either a complete checkpoint or a temporary directory that is ignored. Weights and the
buffer are safetensors, state is JSON; the optimiser's state dict goes through
`torch.save` and is only ever read back with `weights_only=True` (tensors and plain
containers, no arbitrary pickle).

Under torchrun every rank takes part and nothing is gathered: the weights and optimiser
state go through `torch.distributed.checkpoint` (DCP) into `shards/`, each rank writing its
own shard (as torchtitan does), and each rank writes its own buffer and RNG state
(buffer_rank{r}, rng_rank{r}, state_rank{r}.json) into the same temporary directory; the
ranks checksum the files between them, then rank 0 writes the manifest and renames the
directory into place. The run directory must be on a filesystem every node sees. Only the
final model is gathered whole (train.py's export).

Resuming on another number of processes: DCP reshards the weights and optimiser state to
any world size (one process reads the whole tensors), but each rank's replay buffer holds
the rollouts that rank generated and has no owner among a different set of ranks, so a
checkpoint whose buffers hold rollouts is refused on another world size; with empty (or
no) buffers it resumes, rank r < saved world size taking rank r's RNG state and the other
ranks their fresh seeding. Checkpoints written before sharding (model.safetensors and
optim.pt with the full state, also what one process writes) load as before.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from replaygrpo import distributed
from replaygrpo.config import RESUMABLE_KEYS, Config, flatten, key_matches
from replaygrpo.methods import METHODS
from replaygrpo.offload import resident

if TYPE_CHECKING:
    from replaygrpo.replay.buffer import BaseReplayBuffer
    from replaygrpo.sampler import PromptSampler

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
MANIFEST = "manifest.json"
SHARDS = "shards"
"""Under torchrun: the DCP checkpoint of weights and optimiser state, one file per rank."""


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
    if torch.cuda.is_available() and distributed.active():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()  # this rank's device only
    elif torch.cuda.is_available():
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
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])


def incompatible_keys(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved, current)} for values that differ, ignoring those a resume may change.

    A key the saved config lacks (written before the key existed) reads as its default.
    `replay.*` keys the current method does not read (`METHODS[name].reads`) are ignored:
    they change nothing in its run, and older presets set some for methods that ignore them.
    """
    a = flatten(asdict(Config())) | flatten(saved)
    b = flatten(current)
    name = b.get("method.name")
    reads = METHODS.get(name).reads if name in METHODS else None
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not key_matches(k, RESUMABLE_KEYS)
            and not (reads is not None and k.startswith("replay.") and k.removeprefix("replay.") not in reads)}


def save_checkpoint(run_dir: Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, buffer: Any, state: dict[str, Any], replay_gen: torch.Generator,
                    config: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep` (every rank calls it)."""
    main, world, sharded = distributed.is_main(), distributed.world_size(), distributed.active()
    root = run_dir / CKPT_DIR
    final = root / f"step-{step:08d}"
    tmp = Path(distributed.broadcast(str(root / f".tmp-step-{step:08d}-{os.getpid()}")))
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    distributed.barrier()
    if sharded:  # each rank its shard of weights and optimiser state (fsynced by DCP's writer)
        with resident(optimizer):
            distributed.save_sharded(model, optimizer, tmp / SHARDS)
    # This rank's own state: RNGs and buffer (in one process, its metadata goes in state.json).
    sfx = _rank_suffix()
    rng_tensors, own = rng_state()
    rng_tensors["replay_gen"] = replay_gen.get_state()
    save_file(rng_tensors, tmp / f"rng{sfx}.safetensors")
    meta_own: dict[str, Any] = {"rng": own}
    written = [tmp / f"rng{sfx}.safetensors"]
    if buffer is not None:
        buf_tensors, meta_own["buffer"] = buffer.state_dict()
        save_file(buf_tensors, tmp / f"buffer{sfx}.safetensors")
        written.append(tmp / f"buffer{sfx}.safetensors")
    if world > 1:
        (tmp / f"state{sfx}.json").write_text(json.dumps(meta_own))
        written.append(tmp / f"state{sfx}.json")
    for p in written:
        _fsync(p)
    buffer_sizes = distributed.gather(len(buffer) if buffer is not None else 0)
    distributed.barrier()  # every rank's files are in place
    if main:
        if sharded:
            torch.save({"scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        else:
            weights = model.state_dict()
            save_file({k: v.detach().contiguous().cpu().clone() for k, v in weights.items()}, tmp / "model.safetensors")
            with resident(optimizer):
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
            _fsync(tmp / "model.safetensors")
        meta: dict[str, Any] = {"step": step, "state": state, "config": config, "world_size": world,
                                "buffer_sizes": buffer_sizes}
        if world == 1:
            meta.update(meta_own)
        (tmp / "state.json").write_text(json.dumps(meta))
        for p in (tmp / "optim.pt", tmp / "state.json"):
            _fsync(p)
    # Checksums: the ranks share the hashing (a 4B model's shards are tens of GB).
    names = distributed.broadcast(sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
                                  if main else None)
    sums = distributed.gather({n: _sha256(tmp / n) for n in names[distributed.rank()::world]})
    if main:
        (tmp / MANIFEST).write_text(json.dumps(dict(sorted(kv for part in sums for kv in part.items()))))
        _fsync(tmp / MANIFEST)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync(root)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()  # no rank goes on (or exits) before the checkpoint is in place
    return final


def _rank_suffix(rank: int | None = None, world: int | None = None) -> str:
    """'' in one process, '_rank{r}' under torchrun: the names of a rank's own files
    (this process's, or rank `rank`'s of a run of `world` processes)."""
    rank = distributed.rank() if rank is None else rank
    world = distributed.world_size() if world is None else world
    return f"_rank{rank}" if world > 1 else ""


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
    """Everything a resume needs but the weights and optimiser state of a sharded checkpoint
    (`meta["sharded"]`: `distributed.load_sharded` reads them). A full-state checkpoint's
    weights and optimiser state are read on rank 0 only ({} elsewhere;
    `distributed.load_full_state` broadcasts them). Each rank reads its own buffer and RNGs."""
    meta = json.loads((path / "state.json").read_text())
    saved_world, world, rank = meta.get("world_size", 1), distributed.world_size(), distributed.rank()
    if saved_world != world:
        sizes = meta.get("buffer_sizes")  # absent before sharded checkpoints: any buffer file counts
        if any((path / f"buffer{_rank_suffix(r, saved_world)}.safetensors").exists() for r in range(saved_world)) \
                and (sizes is None or any(sizes)):
            raise CheckpointError(
                f"checkpoint {path} was written by {saved_world} process(es) and this run has {world}: the "
                f"weights and optimiser state would reshard, but each rank's replay buffer holds the rollouts "
                f"that rank generated ({sizes if sizes is not None else 'sizes not recorded'}), and they have "
                "no owner among a different number of ranks; resume with the same number of processes "
                "(torchrun --nnodes/--nproc_per_node).")
        log.warning("checkpoint %s was written by %d process(es), this run has %d: weights and optimiser state "
                    "reshard; the replay buffers were empty; ranks beyond %d start their RNGs from the seed",
                    path, saved_world, world, saved_world)
    src = rank if rank < saved_world else None  # whose buffer and RNGs this rank takes
    sfx = _rank_suffix(rank, saved_world)
    if saved_world > 1 and src is not None:
        meta.update(json.loads((path / f"state{sfx}.json").read_text()))
    elif saved_world > 1:
        meta.pop("buffer", None)
    main = distributed.is_main()
    meta["sharded"] = (path / SHARDS).is_dir()
    if meta["sharded"]:
        optim = torch.load(path / "optim.pt", weights_only=True, map_location="cpu") if main else {}
    else:
        meta["weights"] = load_file(path / "model.safetensors") if main else {}
        optim = torch.load(path / "optim.pt", weights_only=True, map_location="cpu") if main else {"optimizer": {}}
    optim["scheduler"] = distributed.broadcast(optim.get("scheduler"))
    meta["optim"] = optim
    if src is not None:
        meta["rng_tensors"] = load_file(path / f"rng{sfx}.safetensors")
        if (path / f"buffer{sfx}.safetensors").exists():
            meta["buffer_tensors"] = load_file(path / f"buffer{sfx}.safetensors")
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


def resume(cfg: Config, run_dir: Path, cfg_dict: dict[str, Any], *, model: torch.nn.Module,
           optimizer: torch.optim.Optimizer, scheduler: Any, buffer: BaseReplayBuffer | None,
           replay_gen: torch.Generator, sampler: PromptSampler) -> dict[str, Any] | None:
    """Restore everything the next step depends on from the checkpoint `cfg.resume` points
    at, and cut metrics.jsonl back to its step; return the loop state, or None (fresh start)."""
    metrics_path = run_dir / "metrics.jsonl"
    ckpt = find_resume_point(run_dir, cfg.resume) if cfg.resume is not None and distributed.is_main() else None
    ckpt = distributed.broadcast(ckpt)  # rank 0 checks the checksums once and picks for all
    if ckpt is None:
        if (cfg.resume is not None or cfg.overwrite) and distributed.is_main():
            truncate_metrics(metrics_path, 0)
        return None
    saved = load_checkpoint(ckpt)
    bad = incompatible_keys(saved["config"], cfg_dict)
    if bad:
        raise CheckpointError(f"checkpoint {ckpt} was written with a different config; keys that differ: "
                              + ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in bad.items()))
    with resident(optimizer):
        if saved["sharded"]:
            distributed.load_sharded(model, optimizer, ckpt / SHARDS)
        else:
            distributed.load_full_state(model, optimizer, saved["weights"], saved["optim"]["optimizer"])
    scheduler.load_state_dict(saved["optim"]["scheduler"])
    if buffer is not None and "buffer_tensors" in saved:
        buffer.load_state_dict(saved["buffer_tensors"], saved["buffer"])
    if "rng_tensors" in saved:  # absent on a rank the checkpoint's run did not have
        set_rng_state(saved["rng_tensors"], saved["rng"])
        replay_gen.set_state(saved["rng_tensors"]["replay_gen"])
    state = saved["state"]
    sampler.load_state_dict(state["sampler"])
    if distributed.is_main():
        truncate_metrics(metrics_path, state["step"])
    log.info("resumed from %s at step %d", ckpt, state["step"])
    return state
