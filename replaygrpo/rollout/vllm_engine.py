"""Generation with a colocated `vllm.LLM` in the trainer process, behind the HF engine's interface.

Imported only when `engine=vllm` is selected (see `build_engine`); the base install never
needs vLLM. The engine runs vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0,
as TRL's colocate mode does), so no worker process is spawned and weights pass to the
engine's model by reference.

Log-prob convention. The engine is built with `logprobs_mode="processed_logprobs"`: the
log-prob vLLM returns for a sampled token is taken after temperature scaling (and after
top-p), i.e. log_softmax(logits / T) at that token when top_p = 1, the quantity the trainer
computes (`replaygrpo.forward.completion_logprobs`) and the HF engine returns. With
top_p < 1 vLLM's value is the log-prob under the renormalised nucleus (the true behaviour
probability), while the HF engine and the trainer use the untruncated distribution: keep
top_p = 1 where pi_old comes from the engine. Greedy calls (temperature 0) return zeros,
as the HF engine does.

Weight sync after every optimiser step (`engine.sync`):
- `inplace`: the trainer's state dict streams to vLLM's in-place reloader (the worker's
  `reload_weights`, vLLM >= 0.32, which re-runs each layer's post-load processing, so the
  CPU backend's repacked kernels are rebuilt too) in chunks of at most `chunk_bytes`, cast to
  the engine dtype; no file and no rebuild. Older vLLMs fall back to the model's own
  `load_weights`, chunk by chunk (correct on GPU; on the CPU backend it fails, since the
  repacked parameters have lost their weight loaders).
- `reload`: save safetensors, shut the LLM down and build a new one from the files. Slow,
  always correct.
After each sync the engine-vs-trainer log-prob gap on a fixed probe batch (mean absolute
difference of per-token log-probs at temperature 1) is stored in `last_logprob_gap` (logged
as `sync/logprob_gap`, see `metrics()`), and a gap above `engine.max_logprob_gap` raises.

Under torchrun each rank's engine runs in vLLM's external-launcher mode on the trainer's
process group: one engine per rank (data parallel), or one tensor-parallel engine per
`engine.tensor_parallel_size` consecutive ranks, which gathers the group's prompts so its
ranks submit the same requests. Weights are gathered from the FSDP2 shards tensor by
tensor. vLLM's shutdown destroys the process group it joined, so there `reload` re-reads
the saved files into the running engine instead of rebuilding it. See docs/vllm.md.

Sleep mode (`engine.sleep_mode`, CUDA only): `sleep()` before the update frees the engine's
GPU memory (level 2: weights and KV cache); the next `sync_weights` wakes it and refills
the weights. On CPU vLLM has no sleep mode and both calls are no-ops.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import os
import random
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from replaygrpo import distributed
from replaygrpo.config import EngineConfig
from replaygrpo.rollout.engine import register_engine
from replaygrpo.records import Completion, SamplingParams

log = logging.getLogger(__name__)

CHUNK_BYTES = 512 << 20
"""Largest chunk of weights materialised (cast to the engine dtype) at once during an in-place sync."""
CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache of the CPU backend (gpu_memory_utilization means nothing there)."""
PROBE_SIZE = 4
"""Sequences in the probe batch of the post-sync log-prob check."""
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _import_vllm() -> Any:
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        log.warning("VLLM_ENABLE_V1_MULTIPROCESSING=%s ignored: the colocated engine runs in-process",
                    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"])
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "engine=vllm needs vLLM, which the base install leaves out: `pip install -e '.[gpu]'` on a "
            "GPU box, or scripts/make_vllm_venv.sh for the CPU build used by the tests") from err
    return vllm


def weight_chunks(model: torch.nn.Module, dtype: torch.dtype,
                  max_bytes: int = CHUNK_BYTES) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The state dict as lists of (name, tensor in `dtype`) of at most `max_bytes` each
    (a single larger tensor is a chunk of its own). Lazy: a chunk is cast when it is reached.
    Under torchrun the tensors are whole, gathered from the FSDP shards as they are reached,
    and every rank must walk all chunks."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in distributed.full_state_items(model):
        nbytes = t.numel() * dtype.itemsize
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, t.detach().to(dtype)))
        size += nbytes
    if chunk:
        yield chunk


def worst_gap(gaps: list[float]) -> float:
    """The largest of the ranks' gaps, NaN if any is NaN (`max` would hide a NaN not first)."""
    return math.nan if any(math.isnan(g) for g in gaps) else max(gaps)


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Restore the trainer's global RNGs (python, numpy, torch, CUDA) after the block."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _load_chunk(worker: Any, chunk: list[tuple[str, torch.Tensor]]) -> None:
    """Run on the vLLM worker: copy one chunk into the model through its own weight loaders."""
    worker.model_runner.model.load_weights(chunk)


@register_engine("vllm")
class VLLMEngine:
    def __init__(self, model: torch.nn.Module, eos_token_id: int, pad_token_id: int, batch_size: int = 256,
                 cfg: Any = None, stop_token_ids: list[int] | None = None,
                 autocast_dtype: torch.dtype | None = None, tokenizer: Any = None,
                 workdir: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        self._vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.cfg: EngineConfig = cfg.engine if cfg is not None else EngineConfig()
        if self.cfg.sync not in ("inplace", "reload"):
            raise ValueError(f"engine.sync={self.cfg.sync!r}: use inplace or reload")
        self.eos = eos_token_id
        self.stop_ids = sorted({eos_token_id, *(stop_token_ids or [])})
        self.pad = pad_token_id
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.chunk_bytes = chunk_bytes
        # Under torchrun each rank runs an engine in vLLM's external-launcher mode; the ranks
        # of one tensor-parallel group (consecutive ranks) act as one engine and must submit
        # the same requests with the same seeds, so they share both.
        # (config.validate checks that it divides the torchrun processes.)
        self.tp = self.cfg.tensor_parallel_size
        self.tp_group = distributed.peers(self.tp) if self.tp > 1 else None
        self.seed = int(getattr(cfg, "seed", 0) or 0) + distributed.rank() // self.tp
        dtype_name = cfg.model.dtype if cfg is not None else next(
            k for k, v in _DTYPES.items() if v == next(model.parameters()).dtype)
        self.dtype_name = dtype_name
        self.dtype = _DTYPES[dtype_name]
        self.on_cpu = current_platform.is_cpu()
        self.sleep_supported = self.cfg.sleep_mode and current_platform.is_sleep_mode_available()
        if self.cfg.sleep_mode and not self.sleep_supported:
            log.info("engine.sleep_mode: not supported by vLLM on this platform; sleep()/wake_up() are no-ops")
        self.tokenizer = tokenizer
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.dir = Path(tempfile.mkdtemp(prefix="replaygrpo-vllm-", dir=workdir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.asleep = False
        self.probe: list[list[int]] | None = None
        self.last_logprob_gap: float | None = None
        self.syncs = 0
        self._save(model)
        self.llm = self._build()
        self._check(model)

    # --- building ------------------------------------------------------------------------
    def _save(self, model: torch.nn.Module) -> None:
        """The model's config and weights (in the engine dtype, one safetensors file per
        chunk: bounded memory) into this rank's own directory, for `LLM(model=dir)`."""
        from safetensors.torch import save_file

        for i, chunk in enumerate(weight_chunks(model, self.dtype, self.chunk_bytes)):
            # copy=True: tied weights (Qwen3's embeddings and head) must not share memory in a file
            save_file({name: t.to("cpu", copy=True).contiguous() for name, t in chunk},
                      self.dir / f"model-{i:05d}.safetensors")
        config = copy.deepcopy(model.config)
        if not config.architectures:  # vLLM picks its model class by this (save_pretrained sets it too);
            # the first transformers class, as FSDP2 wraps the model's class in one of its own
            config.architectures = [next(c.__name__ for c in type(model).__mro__
                                         if c.__module__.startswith("transformers."))]
        config.save_pretrained(self.dir)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(self.dir)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(self.dir)

    def _build(self) -> Any:
        kwargs: dict[str, Any] = dict(
            model=str(self.dir), dtype=self.dtype_name, seed=self.seed,
            skip_tokenizer_init=self.tokenizer is None,  # prompts and outputs are token ids
            logprobs_mode="processed_logprobs", enable_prefix_caching=True,
        )
        if distributed.active():  # the torchrun ranks are vLLM's ranks; it joins their process group
            kwargs.update(distributed_executor_backend="external_launcher", tensor_parallel_size=self.tp)
        if self.on_cpu:
            kwargs.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True)
        else:
            kwargs.update(gpu_memory_utilization=self.cfg.gpu_memory_utilization,
                          enable_sleep_mode=self.sleep_supported)
        with _rng_preserved():  # in-process, vLLM seeds python, numpy and torch globally
            return self._vllm.LLM(**kwargs)

    def _shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine = llm.llm_engine
        for obj in (engine, getattr(engine, "engine_core", None)):
            if obj is not None and hasattr(obj, "shutdown"):
                obj.shutdown()
                break
        self.llm = None
        del llm, engine
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # under torchrun this ends the trainer's process group too
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Shut the engine down and delete its model files. Under torchrun, the last
        collective: vLLM's shutdown destroys the process group it joined."""
        self._shutdown()
        self._cleanup()

    # --- generation ----------------------------------------------------------------------
    def _sampling_params(self, params: SamplingParams, seed: int | None) -> Any:
        greedy = params.temperature == 0
        return self._vllm.SamplingParams(
            n=params.n, temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p, top_k=0, max_tokens=params.max_new_tokens,
            logprobs=None if greedy else 0, stop_token_ids=self.stop_ids, seed=seed,
            detokenize=False, skip_special_tokens=False)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self.wake_up()
        # One seed per prompt (vLLM gives the n samples seed + j): a single call-wide seed
        # would share the sampling noise across prompts.
        rng = random.Random(params.seed)
        seeds = [None if params.seed is None else rng.randrange(2**31) for _ in prompts]
        if self.tp_group is None:
            return self._generate(prompts, seeds, params)
        # Tensor parallel: every rank of the group runs the group's prompts, then keeps its own.
        shares = distributed.gather((prompts, seeds), self.tp_group)
        start = sum(len(p) for p, _ in shares[:distributed.rank() % self.tp])
        groups = self._generate([p for ps, _ in shares for p in ps], [s for _, ss in shares for s in ss], params)
        return groups[start:start + len(prompts)]

    def _generate(self, prompts: list[list[int]], seeds: list[int | None],
                  params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        from vllm.inputs import TokensPrompt

        sps = [self._sampling_params(params, seed) for seed in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sps, use_tqdm=False)
        greedy = params.temperature == 0
        groups: list[list[Completion]] = []
        for out in outs:
            group = []
            for c in sorted(out.outputs, key=lambda o: o.index):
                ids = list(c.token_ids)
                if greedy:
                    lps = [0.0] * len(ids)
                else:
                    lps = [pos[tok].logprob for pos, tok in zip(c.logprobs, ids)]
                stopped = c.finish_reason == "stop"
                if stopped and (not ids or ids[-1] not in self.stop_ids):
                    raise RuntimeError(f"vLLM finished on stop but the last token is {ids[-1:]}, not one of "
                                       f"{self.stop_ids}")
                group.append(Completion(token_ids=torch.tensor(ids, dtype=torch.int32),
                                        logprobs=torch.tensor(lps, dtype=torch.float32),
                                        finish_reason="stop" if stopped else "length"))
            groups.append(group)
        if self.probe is None:
            self.probe = [list(p) + g[0].token_ids.tolist() for p, g in zip(prompts[:PROBE_SIZE], groups)]
        return groups

    # --- weight sync ---------------------------------------------------------------------
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s weights, then check the log-prob gap."""
        if self.cfg.sync == "reload" and not distributed.active():
            self._shutdown()
            self._save(model)
            self.llm = self._build()
            self.asleep = False
        else:
            if self.asleep:
                self.llm.wake_up(tags=["weights"])
            if self.cfg.sync == "inplace":
                self._load_inplace(model)
            else:
                # Under torchrun a rebuild is not possible (vLLM's shutdown ends the process
                # group it shares with the trainer): the engine re-reads the saved files
                # through vLLM's own loader instead.
                self._save(model)
                self.llm.collective_rpc("reload_weights", kwargs=dict(
                    weights_path=str(self.dir), is_checkpoint_format=True))
            if self.asleep:
                self.llm.wake_up(tags=["kv_cache"])
                self.asleep = False
            self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self.syncs += 1
        self._check(model)

    def _load_inplace(self, model: torch.nn.Module) -> None:
        chunks = weight_chunks(model, self.dtype, self.chunk_bytes)
        with torch.no_grad():
            try:
                # vLLM's in-place reloader: one pass over all weights, with each layer's
                # post-load processing re-run once its weights are in.
                self.llm.collective_rpc("reload_weights", kwargs=dict(
                    weights_iterator=(item for chunk in chunks for item in chunk), is_checkpoint_format=True))
            except NotImplementedError:  # an older vLLM: the model's own loader, chunk by chunk
                for chunk in weight_chunks(model, self.dtype, self.chunk_bytes):
                    self.llm.collective_rpc(_load_chunk, args=(chunk,))

    # --- sleep mode ----------------------------------------------------------------------
    def sleep(self) -> None:
        """Free the engine's GPU memory before the update (weights too: the next
        `sync_weights` refills them). A no-op without sleep mode."""
        if self.sleep_supported and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            raise RuntimeError("the vLLM engine sleeps with its weights dropped (level 2); call "
                               "sync_weights(model) after the update to wake it")

    # --- the post-sync check -------------------------------------------------------------
    def _probe_batch(self) -> list[list[int]]:
        if self.probe is not None:
            return self.probe
        g = torch.Generator().manual_seed(0)  # before the first generate: fixed random tokens
        return torch.randint(0, self.vocab_size, (PROBE_SIZE, 24), generator=g).tolist()

    def engine_logprobs(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Per-token log-probs of each sequence (positions 1..L-1) under the engine, temperature 1."""
        from vllm.inputs import TokensPrompt

        sp = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], sp, use_tqdm=False)
        return [torch.tensor([pos[tok].logprob for pos, tok in zip(o.prompt_logprobs[1:], s[1:])],
                             dtype=torch.float32) for o, s in zip(outs, seqs)]

    def trainer_logprobs(self, model: torch.nn.Module, seqs: list[list[int]]) -> list[torch.Tensor]:
        """The same quantity under the trainer's model, through the update's own forward."""
        from replaygrpo.forward import score

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                # padded: one forward whatever the batch, as a sharded model needs on every rank
                return score(model, [torch.tensor(s[:1]) for s in seqs], [torch.tensor(s[1:]) for s in seqs],
                             self.pad, layout="padded")
        finally:
            model.train(was_training)
            distributed.reshard(model)

    def logprob_gap(self, model: torch.nn.Module, seqs: list[list[int]] | None = None) -> float:
        """Mean |engine - trainer| per-token log-prob over the probe batch."""
        seqs = seqs or self._probe_batch()
        eng = torch.cat(self.engine_logprobs(seqs))
        trn = torch.cat(self.trainer_logprobs(model, seqs))
        return float((eng - trn).abs().mean())

    def _check(self, model: torch.nn.Module) -> None:
        # The worst gap over the ranks: all of them must decide alike, or the others would
        # wait forever for the one that raised.
        gap = worst_gap(distributed.gather(self.logprob_gap(model)))
        self.last_logprob_gap = gap
        log.debug("vLLM sync %d: logprob gap %.3g", self.syncs, gap)
        if not gap <= self.cfg.max_logprob_gap:
            raise RuntimeError(
                f"vLLM engine and trainer disagree after weight sync {self.syncs} (engine.sync={self.cfg.sync}): "
                f"mean |log-prob gap| {gap:.4g} on the probe batch is above engine.max_logprob_gap="
                f"{self.cfg.max_logprob_gap}. The engine is not sampling from the trained weights"
                + ("; try engine.sync=reload." if self.cfg.sync == "inplace" and not distributed.active()
                   else "; check model.dtype and the model's config."))

    def metrics(self) -> dict[str, float]:
        """Per-step metrics for the trainer's log."""
        return {} if self.last_logprob_gap is None else {"sync/logprob_gap": self.last_logprob_gap}
