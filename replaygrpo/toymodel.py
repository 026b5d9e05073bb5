"""The toy lab's base models: a tiny Qwen3ForCausalLM and a tokenizer built here, warm-started
by supervised training, shipped in the package as checksummed files.

A supervised warm start run on the fly is a different model on every CPU (floating-point
sums differ between machines), and so is everything trained from it. So the lab's base
models are artifacts, like Qwen3-Base is for the paper: `replaygrpo toy-base build NAME`
trains one from its recipe (below) into replaygrpo/toybase/NAME/ and writes the SHA-256 of
each file into replaygrpo/toybase/manifest.json; loading checks every file against the
manifest and refuses a mismatch, and a run records the base's digest in summary.json.

`model.name_or_path=toy` still trains a warm start from the model.warmstart_* keys into
cache_dir (for other sizes, e.g. scripts/bench.py); that model is specific to the machine.

The tokenizer keeps digits as single tokens (as Qwen's does) and knows the few words of
the toy prompt; any other ASCII character is its own token, so nothing maps to <unk>.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import string
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from replaygrpo.config import Config
from replaygrpo.data.prompts import render
from replaygrpo.data.toy import make_split, worked_answer

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
WORDS = ["Question", "Answer", "\\boxed", "What", "is"]
BASE_DIR = Path(__file__).resolve().parent / "toybase"
MANIFEST = BASE_DIR / "manifest.json"


class ToyBaseError(RuntimeError):
    """A shipped toy base model is unknown, missing or does not match its checksum."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a toy base model: architecture, data and the supervised warm start."""

    steps: int
    """Supervised steps: fewer makes a weaker base."""
    levels: tuple[int, ...] = (2, 3, 6)
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    num_train: int = 20000
    template: str = "toy"
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256


BASES: dict[str, Recipe] = {
    "toy-weak": Recipe(steps=350),
    "toy-strong": Recipe(steps=500),
}
"""The shipped base models. Changing a recipe means rebuilding it and committing the new files."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate([EOS, "<unk>", *WORDS, *chars])}
    alternatives = "|".join(w.replace("\\", "\\\\") for w in WORDS)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{alternatives}|[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token="<unk>")


def _qwen3(r: Recipe, vocab_size: int, eos_id: int) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=r.hidden_size, intermediate_size=r.intermediate_size,
        num_hidden_layers=r.num_layers, num_attention_heads=r.num_heads,
        num_key_value_heads=r.num_kv_heads, head_dim=r.hidden_size // r.num_heads,
        max_position_embeddings=256, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
    return Qwen3ForCausalLM(config)


def recipe_from_config(cfg: Config) -> Recipe:
    """The warm-start recipe that the model.warmstart_* and data keys describe (`name_or_path=toy`)."""
    m, d = cfg.model, cfg.data
    return Recipe(steps=m.warmstart_steps, levels=tuple(d.levels), lr=m.warmstart_lr,
                  batch_size=m.warmstart_batch_size, seed=m.warmstart_seed, num_train=d.num_train,
                  template=d.template, hidden_size=m.hidden_size, num_layers=m.num_layers,
                  num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, intermediate_size=m.intermediate_size)


def build_model(cfg: Config, vocab_size: int, eos_id: int) -> Qwen3ForCausalLM:
    """A randomly initialised tiny Qwen3 of the size the config's model keys give."""
    return _qwen3(recipe_from_config(cfg), vocab_size, eos_id)


def supervised_batch(tokenizer: PreTrainedTokenizerFast, prompts: list[str], targets: list[str]):
    """Right-padded (input_ids, attention_mask, labels) with the loss on the target tokens only."""
    rows, labels = [], []
    for p, t in zip(prompts, targets):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        t_ids = tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p_ids + t_ids)
        labels.append([-100] * len(p_ids) + t_ids)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    lab = torch.tensor([lb + [-100] * (width - len(lb)) for lb in labels])
    return ids, mask, lab


def train_base(r: Recipe, out: Path, snapshots: dict[int, Path] | None = None) -> Path:
    """Run the supervised warm start of recipe `r` and save model and tokenizer into `out` (replaced).

    `snapshots` {step: dir} also saves the model after that many steps, on the way: a recipe that
    differs only in its step count gets the same model from its own run. One thread and
    deterministic kernels, so two builds on one machine give the same bytes.
    """
    saves = {**(snapshots or {}), r.steps: out}
    if max(saves) > r.steps:
        raise ValueError(f"snapshot at step {max(saves)} is beyond the recipe's {r.steps} steps.")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r.seed)
            tokenizer = build_tokenizer()
            model = _qwen3(r, len(tokenizer), tokenizer.eos_token_id)
            problems = make_split(list(r.levels), r.num_train, r.seed, test=False)
            rng = random.Random(r.seed)
            opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=0.0)
            model.train()
            for step in range(1, r.steps + 1):
                batch = rng.sample(problems, r.batch_size)
                ids, mask, lab = supervised_batch(
                    tokenizer, [render(r.template, p.question) for p in batch], [worked_answer(p) for p in batch])
                loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step in saves:
                    _save(model, tokenizer, saves[step])
                    log.info("warm start: step %d, loss %.4f, saved %s", step, loss.item(), saves[step])
            if r.steps == 0:
                _save(model, tokenizer, out)
    finally:
        torch.set_num_threads(threads)
    return out


def _save(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def file_digests(model_dir: Path) -> dict[str, str]:
    """SHA-256 of every file in a model dir, by file name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(model_dir.iterdir()) if p.is_file()}


def combined_digest(files: dict[str, str]) -> str:
    """One SHA-256 for a whole model dir: of its sorted `name digest` lines."""
    return hashlib.sha256("".join(f"{n} {d}\n" for n, d in sorted(files.items())).encode()).hexdigest()


def read_manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


def build_bases(names: list[str], base_dir: Path = BASE_DIR,
                bases: dict[str, Recipe] | None = None) -> dict[str, dict[str, Any]]:
    """Build shipped bases from their recipes into base_dir/NAME and record their checksums.

    Bases whose recipes differ only in the step count share one run (snapshots on the way).
    """
    bases = BASES if bases is None else bases
    unknown = [n for n in names if n not in bases]
    if unknown:
        raise ToyBaseError(f"unknown toy base {unknown[0]!r}; known: {', '.join(bases)}.")
    runs: dict[Recipe, dict[int, Path]] = {}
    for name in names:
        runs.setdefault(replace(bases[name], steps=0), {})[bases[name].steps] = base_dir / name
    for shared, outs in runs.items():
        last = max(outs)
        log.info("building toy base(s) %s: %d supervised steps", ", ".join(p.name for p in outs.values()), last)
        train_base(replace(shared, steps=last), outs[last], outs)
    manifest_path = base_dir / MANIFEST.name
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in names:
        files = file_digests(base_dir / name)
        manifest[name] = {"recipe": asdict(bases[name]), "files": files, "sha256": combined_digest(files)}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {name: manifest[name] for name in names}


def verify_base(name: str, base_dir: Path = BASE_DIR) -> tuple[Path, str]:
    """The directory of shipped base `name` after checking every file; returns (dir, digest).

    Raises ToyBaseError naming the file that is missing or whose SHA-256 differs.
    """
    manifest_path = base_dir / MANIFEST.name
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if name not in manifest:
        raise ToyBaseError(f"model.name_or_path={name}: no toy base of that name in {manifest_path}; "
                           f"shipped: {', '.join(sorted(manifest)) or 'none'}.")
    model_dir = base_dir / name
    for fname, want in manifest[name]["files"].items():
        path = model_dir / fname
        if not path.is_file():
            raise ToyBaseError(f"toy base {name}: file {path} is missing (listed in {manifest_path}).")
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want:
            raise ToyBaseError(
                f"toy base {name}: {path} has SHA-256 {got}, but {manifest_path} says {want}. The file "
                "was changed or damaged; restore it from git (a deliberate rebuild is `replaygrpo toy-base "
                f"build {name}`, committed with its new manifest).")
    return model_dir, manifest[name]["sha256"]


def warm_start(cfg: Config) -> Path:
    """Train (or reuse from cache_dir) the warm start the config's model.warmstart_* keys describe."""
    r = recipe_from_config(cfg)
    key = hashlib.sha1(json.dumps(asdict(r) | {"version": 2}, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(cfg.cache_dir) / "warmstart" / key
    if (out / "model.safetensors").exists():
        return out
    log.warning("model.name_or_path=toy: training a warm start into %s; it is specific to this machine "
                "(the shipped bases are toy-weak and toy-strong)", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".build{os.getpid()}")
    train_base(r, tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same warm start first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_toy(cfg: Config) -> tuple[Path, dict[str, str]] | None:
    """For a toy model name: its directory and the record of it a run keeps; None for any other model.

    Call `warm_start` on one rank first under torchrun (the others then find it cached).
    """
    name = cfg.model.name_or_path
    if name in BASES or name in read_manifest():
        path, digest = verify_base(name)
        return path, {"name": name, "sha256": digest}
    if name == "toy":
        path = warm_start(cfg)
        return path, {"name": "toy", "sha256": combined_digest(file_digests(path)), "machine_specific": "true"}
    return None
