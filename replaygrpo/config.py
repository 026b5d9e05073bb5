"""The config schema: dataclasses registered in Hydra's ConfigStore, validated once at start.

Each field is documented once, right under it. YAML groups in conf/ fill these nodes;
Hydra rejects unknown keys and ill-typed values, and `replaygrpo.validation.validate` checks
ranges and cross-field rules with an error that names the key, the bad value and what is allowed.

The bottom of the import graph: this module imports no loader and no registry. Keys whose
values name a registered variant (`method.name`, `engine.name`, `loss.agg`, `loss.adv_scale`,
the prompt templates, the toy levels) are checked where they are looked up, by
`replaygrpo.variants.resolve`, which the CLI runs right after `validation.to_config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from replaygrpo.registry import ConfigError

__all__ = ["Config", "ConfigError", "register_configs"]


@dataclass
class ModelConfig:
    name: str = "toy"
    """Short name used in run names and tables."""
    name_or_path: str = "toy-strong"
    """Hub id (Qwen/Qwen3-4B-Base), a local model dir, a shipped toy base (toy-weak, toy-strong:
    replaygrpo/toybase, checksummed), or "toy" (a warm start from the model.warmstart_* keys, trained
    here and cached: specific to the machine)."""
    tokenizer: str | None = None
    """Tokenizer path or hub id; None = the model's own (the toy builds its own)."""
    dtype: str = "float32"
    """Compute dtype: float32, or bfloat16 (autocast over float32 master weights while training)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (large models on GPU)."""
    attn_implementation: str | None = None
    """transformers attention backend (sdpa, eager, flash_attention_2, ...); None = its default.
    Flash attention lets trainer.update_layout=auto pack rows without padding."""
    hidden_size: int = 128
    """Toy only: width of the tiny Qwen3."""
    num_layers: int = 3
    """Toy only: number of decoder layers."""
    num_heads: int = 4
    """Toy only: attention heads (head_dim = hidden_size / num_heads)."""
    num_kv_heads: int = 2
    """Toy only: key/value heads (grouped-query attention, as in Qwen3)."""
    intermediate_size: int = 256
    """Toy only: MLP width."""
    warmstart_steps: int = 600
    """Toy only: supervised steps that make the 'base model' (cached by config)."""
    warmstart_lr: float = 1e-3
    """Toy only: learning rate of the supervised warm start."""
    warmstart_batch_size: int = 64
    """Toy only: batch size of the supervised warm start."""
    warmstart_seed: int = 0
    """Toy only: seed of the warm start; kept apart from `seed` so every RL seed starts from one base."""


@dataclass
class DataConfig:
    name: str = "toy"
    """toy (procedural arithmetic), math_train (MATH 7,500) or dapo_math (DAPO-Math 14k)."""
    path: str | None = None
    """Local JSONL in the layout of shared/data/train/*; None = load from the hub."""
    template: str = "toy"
    """Prompt template name (see replaygrpo.data.prompts): toy, qwen_math, qwen_boxed."""
    levels: list[int] = field(default_factory=lambda: [2, 3, 6])
    """Toy only: difficulty levels mixed in the train and test sets (replaygrpo.data.toy.LEVELS; 6 = written steps)."""
    num_train: int = 20000
    """Toy only: size of the train split."""
    num_test: int = 2400
    """Toy only: distinct held-out problems in the eval set (disjoint from train)."""
    max_prompt_tokens: int = 1024
    """Training prompts whose rendered template is longer than this many tokens are dropped at load time
    (counted in the log and in summary.json); benchmark prompts are never dropped."""


@dataclass
class EngineConfig:
    name: str = "hf"
    """Generation engine: hf (a sampling loop over the trainer's transformers module, CPU or GPU) or vllm."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts; the trainer's log-probs use the same scaling."""
    top_p: float = 1.0
    """Nucleus sampling for training rollouts (1.0 keeps the log-probs exact)."""
    max_new_tokens: int = 48
    """Longest completion; longer ones are cut with finish_reason=length."""
    batch_size: int = 256
    """Sequences per generate call (HF engine)."""
    gpu_memory_utilization: float = 0.4
    """vLLM only: fraction of GPU memory for the engine."""
    sleep_mode: bool = True
    """vLLM only: release the engine's memory during the update."""
    sync: str = "inplace"
    """vLLM only: inplace (stream weights in chunks) or reload (save safetensors and reload)."""
    max_logprob_gap: float = 0.5
    """vLLM only: abort when the engine-vs-trainer mean log-prob gap after sync exceeds this."""
    min_sync_tracking: float = 0.5
    """vLLM only: abort when, from the second sync on, the engine's probe log-probs moved less than
    this fraction of the trainer's since the previous sync (sync/tracking: about 1 when the weights
    arrive, 0 for a stale engine), judged where the trainer's moved more than tracking_min_shift; 0 = off."""
    tracking_min_shift: float | None = None
    """vLLM only: the trainer's mean probe log-prob change (sync/probe_shift) below which
    sync/tracking is noise and not judged; null = the floor calibrated for the engine dtype (docs/vllm.md)."""
    tensor_parallel_size: int = 1
    """vLLM only, under torchrun: ranks per engine (consecutive ranks form one tensor-parallel
    engine and generate their prompts together); must divide the number of processes."""


@dataclass
class TrainerConfig:
    steps: int = 100
    """RL steps (one generation batch and one optimiser step each)."""
    prompts_per_step: int = 16
    """Prompts drawn per step (B); each gets group_size completions."""
    group_size: int = 8
    """Completions per prompt (G)."""
    lr: float = 1e-4
    """AdamW learning rate (constant after warm-up)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in RL steps (all of a step's mini-batch optimiser steps share its rate)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    micro_batch_tokens: int = 16384
    """Token budget per forward/backward micro-batch (gradients accumulate to one step)."""
    mini_batches: int = 1
    """Clipped optimiser steps per RL step: the composed batch is shuffled and split into this many
    parts, each rollout used once (verl's ppo_mini_batch_size = batch / N, TRL's steps_per_generation
    = N). Above 1, with loss.old_logprobs=trainer, pi_old costs one extra no-grad forward."""
    update_layout: str = "auto"
    """How the update lays out a micro-batch (same values and gradients each way): shared_prefix
    (each distinct prompt forwarded once, completions on its KV cache), packed (rows back to back,
    no padding; varlen kernels under flash attention, a dense block mask under sdpa), padded, or
    auto (shared_prefix; under gradient checkpointing, which drops the cache, or torchrun, which
    needs one forward per micro-batch: packed with flash attention, else padded)."""
    skip_zero_advantage: bool = True
    """Leave rollouts with advantage 0 out of the forward/backward: with kl_coef 0 their gradient is
    exactly zero; they still count in the loss normaliser, so the step is unchanged."""
    eval_every: int = 20
    """In-training eval every N steps (and at the start and end); 0 = only start and end."""
    eval_size: int = 2400
    """Problems of the in-training eval: the toy eval set (distinct; ~1 point binomial error at
    2,400), or the fixed subset of trainer.eval_benchmark."""
    eval_benchmark: str | None = None
    """On real data: a benchmark (math500, aime24, ...) whose fixed subset of trainer.eval_size
    problems (the same for every run and seed) is evaluated greedily in training, so accuracy-vs-
    rollouts curves exist at GPU scale; null = no in-training eval. The toy lab always uses its test set."""
    eval_max_new_tokens: int = 48
    """Generation length at the in-training eval."""
    max_bad_steps: int = 5
    """Abort (with a checkpoint of the last good state) after this many non-finite steps in a row."""
    grader_workers: int = 0
    """Reward grading processes (0 = in the trainer process; real math needs workers)."""


@dataclass
class LossConfig:
    clip_low: float = 0.2
    """Lower clip: ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.2
    """Upper clip: ratio is clipped above at 1 + clip_high (clip-higher when > clip_low)."""
    agg: str = "token_mean"
    """Aggregation: token_mean, seq_mean_token_mean or seq_mean_token_sum (Dr. GRPO)."""
    adv_scale: str = "std"
    """Advantage scale: std (GRPO) or none (Dr. GRPO)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the frozen starting policy (0 = off, no reference model kept)."""
    old_logprobs: str = "trainer"
    """Where pi_old comes from: trainer (the update's own forward) or engine (sampled-token log-probs)."""
    tis_cap: float | None = None
    """Truncated importance sampling cap for engine/trainer mismatch (None = off; needs old_logprobs=trainer):
    each token's surrogate, fresh or replayed, is weighted by min(exp(pi_old - engine log-prob), tis_cap)."""


@dataclass
class MethodConfig:
    name: str = "grpo"
    """grpo (no buffer), replay (the paper) or naive_replay (FIFO groups, uniform)."""


@dataclass
class ReplayConfig:
    unit: str = "rollout"
    """rollout (the paper: a group may be split across steps) or group (whole groups)."""
    tau_max: int | None = 2
    """Age bound in steps: a rollout born at s is trainable until step s + tau_max; null = no bound."""
    alpha: float = 1.0
    """Priority exponent: P(i) proportional to (|A_i| + floor)^alpha; 0 = uniform."""
    floor: float = 1e-3
    """Added to |A_i| so no stored rollout has zero priority."""
    replay_ratio: float = 1.0
    """Replayed rollouts per fresh rollout: R = round(replay_ratio * n_fresh)."""
    anchor: bool = True
    """True: all fresh rollouts plus R replayed. False: replay displaces fresh (batch size kept)."""
    max_reuse: int | None = None
    """Evict a rollout after it was replayed this many times (null = until it ages out)."""
    capacity: int = 1024
    """naive_replay only: FIFO capacity in rollouts."""


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(
        default_factory=lambda: ["math500", "aime24", "amc23", "minerva_math", "olympiadbench"]
    )
    """Benchmarks to run (also: toy)."""
    k: int = 1
    """Samples per problem (n) on every benchmark not in k_per_benchmark. Accuracy is avg@n,
    the unbiased pass@1 estimate; pass@n and each pass_k come from the same n samples."""
    k_per_benchmark: dict[str, int] = field(default_factory=dict)
    """Samples per problem for named benchmarks, e.g. {aime24: 32, amc23: 32}; others take k."""
    pass_k: list[int] = field(default_factory=list)
    """pass@k values reported besides pass@n (unbiased estimator), on benchmarks with n >= k."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    max_new_tokens: int = 2048
    limit: int | None = None
    """First N problems of each benchmark (smoke runs)."""
    out: str | None = None
    """Output dir; None = <run dir>/eval."""
    data_root: str | None = None
    """Local benchmark files in the layout of shared/data/benchmarks; None = the hub."""
    template: str = "qwen_math"
    """Prompt template for the benchmarks."""
    batch_size: int = 64
    """Prompts per generate call (with vLLM, its scheduling window: make it large)."""
    engine: str = "hf"
    """hf, or vllm (one process, one GPU, no sleep mode; takes eval.gpu_memory_utilization)."""
    gpu_memory_utilization: float = 0.9
    """eval.engine=vllm: fraction of GPU memory for the eval engine (weights + KV cache). Evaluation
    after training runs in a process of its own, so it has the whole GPU."""
    grader_workers: int = 2
    """Grading worker processes (0 = in-process)."""
    grade_timeout: float = 5.0
    """Seconds per answer before it is marked incorrect."""
    grader: str = "default"
    """Grader profile: default (this project's) or qwen_math (the Qwen2.5-Math harness's
    tolerance, percent and no-box rules); see docs/evaluation.md. Recorded in results.json."""
    grader_rel_tol: float | None = None
    """Relative tolerance for inexactly written numbers; null = the profile's (1e-6; qwen_math 1e-4)."""
    grader_percent: str | None = None
    """sign (x% is x or x/100 where a % is written) or harness (always); null = the profile's."""
    grader_fallback: str | None = None
    """Answer of a response without a box: none, phrase, math or last_number; null = the profile's."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Checkpoint every N steps (0 = only at the end and on SIGTERM/SIGINT)."""
    keep: int = 2
    """Checkpoints kept (oldest deleted first)."""


@dataclass
class LoggerConfig:
    wandb: bool = False
    """Also log to wandb (offline unless WANDB_MODE is set and you are logged in)."""
    project: str = "replaygrpo"
    """wandb project."""


# --- memory plan and FSDP2 memory settings (replaygrpo/memplan.py, replaygrpo/distributed.py) ---
@dataclass
class PlanConfig:
    gpu_memory_gb: float = 80.0
    """Memory of one GPU in GB (1e9 bytes) for the memory plan (`replaygrpo plan`, and the check at the
    start of `train` on CUDA, which refuses a configuration that cannot fit before loading the model)."""


@dataclass
class FsdpConfig:
    mixed_precision: bool = False
    """Under torchrun with model.dtype=bfloat16: FSDP2's MixedPrecisionPolicy (bf16 parameters for the
    all-gather and compute, residual stream included; float32 gradient reduction into float32 shards):
    half the gather traffic and unsharded-parameter memory. False: float32 all-gathers under autocast,
    numerically closest to one process (docs/distributed.md)."""
    offload_optimizer: bool = False
    """Keep AdamW's moments in host memory except during the optimiser step (also in one process): frees
    8 bytes per parameter (divided over the ranks) during generation, the update's passes and the sync,
    for two host-device copies per step (replaygrpo/offload.py). Values are unchanged."""


@dataclass
class Config:
    seed: int = 0
    """Seeds python, numpy, torch and the engine's sampling."""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    eval_after_train: bool = False
    """Run `replaygrpo eval` on the final model into <run dir>/eval."""
    resume: str | None = None
    """auto (newest valid checkpoint in the run dir), a checkpoint path, or null."""
    cache_dir: str = ".cache"
    """Where warm starts are cached (relative to the working directory)."""
    overwrite: bool = False
    """Allow training into a run dir that already holds a finished run."""


# Lists of config keys other modules act on, kept here beside the schema. A pattern ending
# in "." covers every key under it.
RESUMABLE_KEYS = ("trainer.steps", "checkpoint.", "resume", "logger.", "overwrite", "eval_after_train",
                  "trainer.grader_workers", "cache_dir", "eval.", "trainer.update_layout",
                  "trainer.skip_zero_advantage", "trainer.micro_batch_tokens", "plan.",
                  "fsdp.offload_optimizer")
"""Keys that may change between a run and its resumption (the last five change a step's cost or the
memory plan, not its values)."""
BOOKKEEPING_KEYS = ("seed", "resume", "overwrite", "cache_dir", "device", "eval_after_train", "logger.", "plan.",
                    "checkpoint.", "eval.out", "eval.data_root", "eval.batch_size", "eval.grader_workers", "hydra.")
"""Keys that do not make a different method: runs differing only in these are seeds of one row (report)."""

_TOY_BASE = "model.name_or_path=toy"  # the warm start built from the model.* shape keys and the toy task's keys
READ_ONLY_WHEN: dict[str, tuple[str, ...]] = {
    **{f"model.{k}": (_TOY_BASE,) for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                            "intermediate_size", "warmstart_steps", "warmstart_lr",
                                            "warmstart_batch_size", "warmstart_seed")},
    "data.levels": ("data.name=toy", _TOY_BASE),
    "data.num_train": ("data.name=toy", _TOY_BASE),
    "data.num_test": ("data.name=toy",),
}
"""Keys read only under one of their settings (key=value). Under none of them a non-default value
would change nothing, so validation refuses it, naming the key."""


def key_matches(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether the dotted `key` is one of `patterns` or under one ending in "."."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
