"""Loading the policy: a hub id, a local model dir, a training run directory, or the toy lab.

The real loading path (hub ids such as Qwen/Qwen3-4B-Base) stays as users run it; here
without internet, tests use the toy model and local directories.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

FINAL_MODEL = "final_model"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class ModelLoadError(RuntimeError):
    pass


def resolve_model_path(name_or_path: str) -> str:
    """A run directory means its final model; a local dir must hold weights; else a hub id."""
    path = Path(name_or_path)
    if not path.exists():
        if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
            raise ModelLoadError(f"model path {name_or_path!r} does not exist.")
        return name_or_path  # a hub id such as Qwen/Qwen3-4B-Base
    if (path / FINAL_MODEL).is_dir():
        path = path / FINAL_MODEL
    if not any((path / f).exists() for f in WEIGHT_FILES):
        raise ModelLoadError(
            f"model directory {str(path)!r} holds no weights (looked for {', '.join(WEIGHT_FILES)}); "
            "pass a training run directory, a model directory saved with save_pretrained, or a hub id.")
    return str(path)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(name_or_path: str, dtype: str = "float32", device: str = "auto",
               tokenizer: str | None = None, attn_implementation: str | None = None,
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = resolve_model_path(name_or_path)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn_implementation)
        tok = AutoTokenizer.from_pretrained(tokenizer or path)
    except OSError as err:
        raise ModelLoadError(f"could not load model {name_or_path!r}: {err}") from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(resolve_device(device)), tok


def end_of_text_id(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> int:
    """The token that ends a completion: the base model's eos (Qwen3-Base: <|endoftext|>, 151643)."""
    eos = model.generation_config.eos_token_id if model.generation_config else None
    if isinstance(eos, list):
        eos = eos[0]
    return int(eos if eos is not None else tok.eos_token_id)


STOP_TOKENS = ("<|endoftext|>", "<|im_end|>")


def stop_token_ids(tok: PreTrainedTokenizerBase, eos: int) -> list[int]:
    """eos plus the ChatML turn end where the vocabulary has it: a base model under the
    qwen_math template otherwise writes on into turns it invents."""
    ids = {eos}
    for t in STOP_TOKENS:
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return sorted(ids)
