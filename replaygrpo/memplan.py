"""The per-GPU memory plan of a composed config, from the model's shape alone (no weights loaded).

Four phases share one card (docs/reproduction.md, "Memory: choreography and plan"):
- generate: the trainer's float32 master weights and AdamW states (sharded over the ranks
  under FSDP2; the moments in host memory with fsdp.offload_optimizer; gradients are None
  between steps) beside the engine: vLLM's whole `engine.gpu_memory_utilization` share (its
  bf16 weights, then KV cache in what is left), or the HF engine's KV cache on the
  trainer's own (unsharded) weights;
- update: the engine asleep (vLLM sleep mode frees its share), the trainer adds float32
  gradients, one micro-batch's activations at `trainer.micro_batch_tokens`, a chunk of
  full-vocabulary logits, and under FSDP2 the unsharded layers in flight;
- step: activations freed; weights, gradients, AdamW states and foreach AdamW's temporary;
- sync: the engine's weights woken (its KV cache still asleep) and the largest tensor the
  in-place sync gathers whole and casts; then the KV cache wakes (the generate phase again).

Figures are estimates (bytes per token per layer counted from a Qwen3 decoder layer under
bf16 autocast over a float32 residual stream, flash/SDPA attention without a T x T score
matrix); tests/test_memplan.py checks them against measured CPU peaks. Not counted: the
CUDA context and allocator fragmentation (a few GB: the verdict keeps `HEADROOM` free).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from replaygrpo.config import ConfigError

if TYPE_CHECKING:
    from replaygrpo.config import Config

log = logging.getLogger(__name__)

GB = 1e9
HEADROOM = 0.9
"""Fraction of the card a phase may use: the rest for the CUDA context, NCCL and fragmentation."""
LOGITS_CHUNK = 4096
"""Tokens per logits chunk in the update (update_step's chunk_size)."""
SYNC_CHUNK_BYTES = 512 << 20
"""The in-place sync's cast chunk (rollout/vllm_engine.CHUNK_BYTES)."""
ENGINE_ACTIVATION_BYTES = 2 * GB
"""vLLM's own activation/sampler workspace inside its share, before the KV cache (a rough profile figure)."""


class PlanError(ConfigError):
    """The configuration cannot fit, or the model cannot be sized; the message names the key to change."""


@dataclass(frozen=True)
class Shape:
    """A Qwen3-style decoder: what the memory depends on."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True

    @property
    def layer_params(self) -> int:
        h, hd = self.hidden, self.head_dim
        attn = h * hd * (2 * self.heads + 2 * self.kv_heads) + 2 * hd  # q, k, v, o; q_norm, k_norm
        return attn + 3 * h * self.intermediate + 2 * h  # gate, up, down; two RMSNorms

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        head = 0 if self.tied else self.embed_params
        return self.embed_params + head + self.layers * self.layer_params + self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def _qwen3(hidden: int, layers: int, heads: int, intermediate: int) -> Shape:
    return Shape(hidden, layers, heads, 8, 128, intermediate, 151936, True)


KNOWN: dict[str, Shape] = {  # shared/data/manifest.json "qwen3_base_architectures"
    "Qwen/Qwen3-0.6B-Base": _qwen3(1024, 28, 16, 3072),
    "Qwen/Qwen3-1.7B-Base": _qwen3(2048, 28, 16, 6144),
    "Qwen/Qwen3-4B-Base": _qwen3(2560, 36, 32, 9728),
}


def shape_from_hf_config(c: dict) -> Shape:
    heads = c["num_attention_heads"]
    return Shape(hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
                 kv_heads=c.get("num_key_value_heads") or heads, head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                 intermediate=c["intermediate_size"], vocab=c["vocab_size"], tied=c.get("tie_word_embeddings", False))


def model_shape(cfg: Config) -> Shape:
    """The policy's shape: the toy config, a shipped toy base, a local config.json, the local hub cache, or KNOWN."""
    m = cfg.model
    if m.name_or_path == "toy":
        from replaygrpo.toymodel import build_tokenizer

        return Shape(m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.hidden_size // m.num_heads,
                     m.intermediate_size, len(build_tokenizer()), True)
    from replaygrpo.toymodel import BASE_DIR, BASES

    path = BASE_DIR / m.name_or_path if m.name_or_path in BASES else Path(m.name_or_path)  # a shipped toy base
    for candidate in (path / "final_model" / "config.json", path / "config.json"):
        if candidate.is_file():
            return shape_from_hf_config(json.loads(candidate.read_text()))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(m.name_or_path, "config.json")
        if isinstance(cached, str):
            return shape_from_hf_config(json.loads(Path(cached).read_text()))
    except Exception:  # noqa: BLE001  (not a repo id: fall through to the table)
        pass
    if m.name_or_path in KNOWN:
        return KNOWN[m.name_or_path]
    raise PlanError(f"cannot size model.name_or_path={m.name_or_path!r}: no config.json there or in the hub "
                    f"cache, and not one of {', '.join(KNOWN)}.")


def activation_bytes(s: Shape, tokens: int, compute_bytes: int, grad_ckpt: bool) -> int:
    """Activations a backward needs for one micro-batch of `tokens` tokens.

    Per token and layer: the two RMSNorms keep float32 input and output (16h); the linears'
    inputs in the compute dtype (2h + heads*hd + I); q/k/v outputs before and after RoPE,
    q/k norms in float32, the attention output; the MLP's gate, up and SiLU outputs (3I).
    With gradient checkpointing only each layer's float32 input stays, plus one layer
    recomputed during backward.
    """
    h, hd, d = s.hidden, s.head_dim, compute_bytes
    per_layer = 16 * h + d * (2 * h + 4 * s.intermediate + 5 * s.heads * hd + 3 * s.kv_heads * hd) \
        + 4 * (s.heads + s.kv_heads) * hd
    if grad_ckpt:
        return tokens * (4 * h * s.layers + per_layer)
    return tokens * per_layer * s.layers


def logits_bytes(s: Shape, tokens: int) -> int:
    """One logits chunk: float32 logits, their log-softmax and its gradient, plus the final hidden states."""
    return min(tokens, LOGITS_CHUNK) * s.vocab * 12 + tokens * s.hidden * 8


@dataclass
class Plan:
    shape: Shape
    world: int
    gpu_bytes: float
    phases: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fix: str | None = None

    def total(self, phase: str) -> float:
        return sum(b for _, b in self.phases[phase])

    @property
    def fits(self) -> bool:
        return self.fix is None

    def render(self) -> str:
        lines = [f"memory plan per GPU: {self.shape.params / 1e9:.2f}B parameters, {self.world} rank(s), "
                 f"{self.gpu_bytes / GB:.0f} GB card ({HEADROOM:.0%} usable: {self.gpu_bytes * HEADROOM / GB:.1f} GB)"]
        for phase, items in self.phases.items():
            lines.append(f"  {phase:<9} {self.total(phase) / GB:7.2f} GB")
            lines += [f"    {name:<56} {b / GB:7.2f} GB" for name, b in items]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("  verdict: fits" if self.fits else f"  verdict: DOES NOT FIT: {self.fix}")
        return "\n".join(lines)


def make_plan(cfg: Config, world: int | None = None, gpu_memory_gb: float | None = None) -> Plan:
    """The per-GPU budget of `cfg` on `world` ranks (default: WORLD_SIZE) with cards of `gpu_memory_gb`."""
    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    gpu = (gpu_memory_gb or cfg.plan.gpu_memory_gb) * GB
    s, t, e = model_shape(cfg), cfg.trainer, cfg.engine
    p = s.params
    d = 2 if cfg.model.dtype == "bfloat16" else 4
    plan = Plan(s, world, gpu)
    sharded = ", sharded" if world > 1 else ""
    static = [(f"weights (float32 masters{sharded})", 4 * p / world),
              (f"optimiser (AdamW exp_avg + exp_avg_sq, float32{sharded})", 8 * p / world)]
    if cfg.loss.kl_coef > 0:
        static.append((f"reference model (float32{sharded})", 4 * p / world))
    tokens = t.micro_batch_tokens
    optim = static[1]
    if cfg.fsdp.offload_optimizer:  # in host memory except during the step itself
        static = [x for x in static if x is not optim]
    # The optimiser step, activations freed: foreach AdamW holds one float32 temporary per parameter.
    plan.phases["step"] = [*static, *([optim] if cfg.fsdp.offload_optimizer else []),
                           (f"gradients (float32{sharded})", 4 * p / world),
                           ("AdamW foreach temporary (float32)", 4 * p / world)]
    update = [*static, (f"gradients (float32{sharded})", 4 * p / world),
              (f"activations ({tokens} tokens, grad ckpt {'on' if cfg.model.gradient_checkpointing else 'off'})",
               activation_bytes(s, tokens, d, cfg.model.gradient_checkpointing)),
              (f"logits chunk ({min(tokens, LOGITS_CHUNK)} tokens x {s.vocab} vocab)", logits_bytes(s, tokens))]
    if world > 1:  # FSDP2: the root (embeddings) stays unsharded after forward; a layer in use and one prefetched
        gathered = 2 if cfg.fsdp.mixed_precision else 4  # MixedPrecisionPolicy gathers bf16
        update.append((f"FSDP2 unsharded params (root + 2 layers, {'bf16' if gathered == 2 else 'float32'})",
                       gathered * ((1 if s.tied else 2) * s.embed_params + 2 * s.layer_params)))
    seq = cfg.data.max_prompt_tokens + e.max_new_tokens
    if e.name == "vllm":
        share = e.gpu_memory_utilization * gpu
        tp = e.tensor_parallel_size
        engine_weights = 2 * p / tp
        kv = share - engine_weights - ENGINE_ACTIVATION_BYTES
        engine = [(f"vLLM share (engine.gpu_memory_utilization={e.gpu_memory_utilization})", share)]
        plan.phases["generate"] = [*static, *engine]
        if not e.sleep_mode:
            update += engine
        plan.phases["update"] = update
        largest = 4 * max(s.embed_params, s.hidden * s.intermediate)  # gathered whole, float32
        # The sync wakes the engine's weights only, streams the new ones in, then wakes the KV cache.
        plan.phases["sync"] = [*static, (f"vLLM bf16 weights (woken; KV cache still asleep{', tp ' + str(tp) if tp > 1 else ''})",
                                         engine_weights if e.sleep_mode else share),
                               ("largest gathered tensor (float32) + cast chunk",
                                largest + min(SYNC_CHUNK_BYTES, largest // 2))]
        kv_tokens = kv / s.kv_bytes_per_token(2) if kv > 0 else 0
        plan.notes.append(f"vLLM share {share / GB:.1f} GB = bf16 weights {engine_weights / GB:.1f} GB + workspace "
                          f"~{ENGINE_ACTIVATION_BYTES / GB:.0f} GB + KV cache {max(kv, 0) / GB:.1f} GB "
                          f"({kv_tokens:,.0f} tokens; {kv_tokens / seq:,.0f} sequences of {seq} tokens)")
        if kv_tokens < seq:
            plan.fix = (f"the vLLM share leaves no KV cache for one {seq}-token sequence; raise "
                        "engine.gpu_memory_utilization (or lower engine.max_new_tokens)")
    else:
        rows = min(e.batch_size, t.prompts_per_step * t.group_size // world)
        gen = [*static]
        if world > 1:
            gen.append(("full weights while generating (HF engine, float32)", 4 * p))
        gen.append((f"HF KV cache ({rows} sequences x {seq} tokens)", rows * seq * s.kv_bytes_per_token(d)))
        plan.phases["generate"] = gen
        plan.phases["update"] = update
    _verdict(plan, cfg, static)
    return plan


def _verdict(plan: Plan, cfg: Config, static: list[tuple[str, float]]) -> None:
    """Name the key to change for the first phase over budget (if no earlier check did)."""
    usable = plan.gpu_bytes * HEADROOM
    if plan.fix is not None:
        return
    if sum(b for _, b in static) > usable:
        plan.fix = (f"the float32 weights and AdamW states alone need {sum(b for _, b in static) / GB:.1f} GB per rank; "
                    "shard them over more GPUs (torchrun --nproc_per_node), or choose a smaller model.name_or_path")
        return
    # The step and the update first: their floor (states + gradients) does not move with the engine's share.
    for phase in sorted(plan.phases, key=lambda ph: ph not in ("step", "update")):
        items, total = plan.phases[phase], plan.total(phase)
        if total <= usable:
            continue
        over = (total - usable) / GB
        if phase == "step":
            plan.fix = (f"the optimiser step (weights, gradients, AdamW states and a temporary) needs {over:.1f} GB "
                        "more than the card; shard over more GPUs (torchrun --nproc_per_node)")
        elif phase == "update" and not cfg.model.gradient_checkpointing:
            plan.fix = f"the update needs {over:.1f} GB more than the card; set model.gradient_checkpointing=true"
        elif phase == "update":
            act = next(b for n, b in items if n.startswith("activations"))
            fixed, per_token = total - act, act / cfg.trainer.micro_batch_tokens
            room = int((usable - fixed) / per_token) if per_token > 0 and usable > fixed else 0
            plan.fix = (f"the update needs {over:.1f} GB more than the card; lower trainer.micro_batch_tokens "
                        f"(at most ~{room} fits)" if room > 0 else
                        f"the update needs {over:.1f} GB more than the card, at any trainer.micro_batch_tokens; "
                        "shard over more GPUs (torchrun --nproc_per_node)")
        elif cfg.engine.name == "vllm":
            share = cfg.engine.gpu_memory_utilization * plan.gpu_bytes
            room = usable - (plan.total("generate") - share)
            plan.fix = (f"the {phase} phase needs {over:.1f} GB more than the card; lower "
                        f"engine.gpu_memory_utilization (at most {max(room, 0) / plan.gpu_bytes:.2f} fits "
                        "beside the trainer), or shard over more GPUs")
        else:
            plan.fix = f"generation needs {over:.1f} GB more than the card; lower engine.batch_size"
        return


def check(cfg: Config, device_type: str, world: int) -> Plan | None:
    """At the start of `train`: log the plan; on CUDA refuse (PlanError) a configuration that cannot fit.
    A model that cannot be sized is only warned about (the plan needs its shape, training does not)."""
    try:
        plan = make_plan(cfg, world)
    except PlanError as err:
        log.warning("no memory plan: %s", err)
        return None
    log.info("%s", plan.render())
    if device_type == "cuda" and not plan.fits:
        raise PlanError(f"memory plan: {plan.fix} (plan.gpu_memory_gb={cfg.plan.gpu_memory_gb:g}; "
                        "see `replaygrpo plan` with the same overrides)")
    return plan
