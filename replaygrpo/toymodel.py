"""The toy lab's 'base model': a tiny Qwen3ForCausalLM, a tokenizer built here, a cached warm start.

The tokenizer keeps digits as single tokens (as Qwen's does) and knows the few words of
the toy prompt; any other ASCII character is its own token, so nothing maps to <unk>.
The warm start is plain supervised training on prompt -> "\\boxed{answer}", stopped early
so the model is right on some problems but not most: RL needs room to move.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from replaygrpo.config import Config
from replaygrpo.data.prompts import render
from replaygrpo.data.toy import make_split

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
WORDS = ["Question", "Answer", "\\boxed", "What", "is"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate([EOS, "<unk>", *WORDS, *chars])}
    alternatives = "|".join(w.replace("\\", "\\\\") for w in WORDS)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{alternatives}|[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token="<unk>")


def build_model(cfg: Config, vocab_size: int, eos_id: int) -> Qwen3ForCausalLM:
    m = cfg.model
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads, head_dim=m.hidden_size // m.num_heads,
        max_position_embeddings=256, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
    return Qwen3ForCausalLM(config)


def _warmstart_key(cfg: Config) -> str:
    m, d = cfg.model, cfg.data
    fields = dict(hidden=m.hidden_size, layers=m.num_layers, heads=m.num_heads, kv=m.num_kv_heads,
                  mlp=m.intermediate_size, steps=m.warmstart_steps, lr=m.warmstart_lr,
                  bs=m.warmstart_batch_size, levels=list(d.levels), template=d.template,
                  n=d.num_train, seed=m.warmstart_seed, version=1)
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


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


def warm_start(cfg: Config) -> Path:
    """Train (or reuse from the cache) the toy base model; returns its directory."""
    out = Path(cfg.cache_dir) / "warmstart" / _warmstart_key(cfg)
    if (out / "model.safetensors").exists():
        return out
    log.info("toy warm start: %d supervised steps into %s", cfg.model.warmstart_steps, out)
    torch.manual_seed(cfg.model.warmstart_seed)
    tokenizer = build_tokenizer()
    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id)
    problems = make_split(list(cfg.data.levels), cfg.data.num_train, cfg.model.warmstart_seed, test=False)
    rng = random.Random(cfg.model.warmstart_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.model.warmstart_lr, weight_decay=0.0)
    model.train()
    for _ in range(cfg.model.warmstart_steps):
        batch = rng.sample(problems, cfg.model.warmstart_batch_size)
        ids, mask, lab = supervised_batch(
            tokenizer, [render(cfg.data.template, p.question) for p in batch],
            [f"\\boxed{{{p.gold}}}" for p in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same warm start first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
