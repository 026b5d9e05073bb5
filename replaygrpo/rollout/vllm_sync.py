"""Weight sync of the colocated vLLM engine, and the log-prob check after each sync.

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
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import torch

from replaygrpo import distributed
from replaygrpo.config import EngineConfig

log = logging.getLogger(__name__)

CHUNK_BYTES = 512 << 20
"""Largest chunk of weights materialised (cast to the engine dtype) at once during an in-place sync."""
PROBE_SIZE = 4
"""Sequences in the probe batch of the post-sync log-prob check."""


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


def _load_chunk(worker: Any, chunk: list[tuple[str, torch.Tensor]]) -> None:
    """Run on the vLLM worker: copy one chunk into the model through its own weight loaders."""
    worker.model_runner.model.load_weights(chunk)


class WeightSync:
    """Mixed into `VLLMEngine`: pushing the trainer's weights and checking the engine agrees.

    Expects the engine's `cfg` (EngineConfig), `llm`, `dtype`, `chunk_bytes`, `asleep`,
    `probe`, `vocab_size`, `pad`, `autocast_dtype`, `_vllm` and its `_save`/`_build`/`_shutdown`.
    """

    cfg: EngineConfig
    llm: Any
    _vllm: Any
    dtype: torch.dtype
    chunk_bytes: int
    asleep: bool
    probe: list[list[int]] | None
    vocab_size: int
    pad: int
    autocast_dtype: torch.dtype | None
    last_logprob_gap: float | None
    syncs: int

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
