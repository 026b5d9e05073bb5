"""Calibrate the post-sync tracking check (`sync/tracking`, `sync/probe_shift`) on vLLM.

For weight changes of several sizes (Gaussian noise of `scale` times each tensor's mean
|weight|), on the toy Qwen3, the engine either really syncs or skips the load (a stale
engine); printed per case: the trainer's mean probe shift, the tracking slope and the
engine-vs-trainer gap. A healthy sync should give a slope near 1 and a stale one near 0
wherever the shift is above the noise floor (TRACKING_MIN_SHIFT in rollout/vllm_sync.py).
One engine dtype per process (vLLM allows one engine per process):

    PYTHONPATH=. .venv-vllm/bin/python scripts/calibrate_sync_tracking.py --dtype float32
    PYTHONPATH=. .venv-vllm/bin/python scripts/calibrate_sync_tracking.py --dtype bfloat16
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--scales", default="1e-6,1e-5,1e-4,1e-3,1e-2")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from replaygrpo.config import Config, EngineConfig
    from replaygrpo.records import SamplingParams
    from replaygrpo.rollout.vllm_engine import VLLMEngine
    from replaygrpo.toymodel import build_model, build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(Config(), len(tok), tok.eos_token_id).eval()
    settings = EngineConfig(name="vllm", sync="inplace", min_sync_tracking=0.0, max_logprob_gap=10.0)
    autocast = torch.bfloat16 if args.dtype == "bfloat16" else None
    eng = VLLMEngine(model, tok.eos_token_id, tok.pad_token_id, settings, dtype=args.dtype, autocast_dtype=autocast,
                     workdir=tempfile.mkdtemp(prefix="calib-"))
    prompts = [tok(q, add_special_tokens=False)["input_ids"]
               for q in ("Question: 3 + 4 = ?\nAnswer: ", "1 =", "12 + 345 + 6 = ?", "Question: 7 * 8 = ?\nAnswer: ")]
    eng.generate(prompts, SamplingParams(n=1, temperature=1.0, max_new_tokens=16, seed=0))  # fixes the probe
    eng.sync_weights(model)
    skip_load = eng._load_inplace
    print(f"engine dtype {args.dtype}; probe lengths {[len(s) for s in eng.probe]}")
    print(f"{'scale':>8} {'sync':>6} {'probe_shift':>12} {'tracking':>9} {'gap':>9}")
    g = torch.Generator().manual_seed(1)
    for scale in map(float, args.scales.split(",")):
        for _ in range(args.repeats):
            for mode in ("real", "stale"):
                new = copy.deepcopy(model)
                with torch.no_grad():
                    for p in new.parameters():
                        p.add_(scale * torch.randn(p.shape, generator=g) * p.abs().mean())
                eng._load_inplace = skip_load if mode == "real" else (lambda m: None)
                eng.sync_weights(new)
                slope, shift = eng.last_tracking or (float("nan"), float("nan"))
                print(f"{scale:8.0e} {mode:>6} {shift:12.3e} {slope:9.3f} {eng.last_logprob_gap:9.2e}")
                eng._load_inplace = skip_load
                eng.sync_weights(model)  # back to the reference weights, really loaded
    eng.close()


if __name__ == "__main__":
    main()
