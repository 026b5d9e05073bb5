"""Peak memory of the chunked log-prob paths against the naive ones, at Qwen3's vocabulary.

Variants (forward + backward of sum(logp), from inputs already in memory):

  logits-naive      token_logprobs(logits, targets, chunk_size=None): log_softmax over (N, V) in float32
  logits-chunked    token_logprobs(logits, targets, chunk_size=C)
  hidden-naive      log_softmax(hidden @ W.T) gathered: the (N, V) logits and their log-softmax exist whole
  hidden-chunked    sequence_logprobs_from_hidden(hidden, W, targets, chunk_size=C)

On CPU torch has no allocator statistics, so each variant runs in its own subprocess
and the figure is the growth of the peak resident set (ru_maxrss) over the peak after
the inputs were made; on CUDA it is torch.cuda.max_memory_allocated over the inputs.
The "logits" variants start from (N, V) logits that already exist (they count what
the log-prob adds on top); the "hidden" variants start from (N, H) hidden states and
the (V, H) head, so the logits are part of what they count.

    .venv/bin/python scripts/bench_logprobs_memory.py [--tokens 1024] [--vocab 151936] [--hidden 1024] [--chunk 256]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

VARIANTS = ("logits-naive", "logits-chunked", "hidden-naive", "hidden-chunked")


def child(variant: str, n: int, v: int, h: int, chunk: int, device: str) -> dict:
    import gc

    # Once at a tiny size first, so lazy initialisation (kernels, thread pools, imports)
    # is in the baseline and not counted as the variant's memory.
    _measure(variant, 16, 512, 16, 4, device)
    gc.collect()
    return _measure(variant, n, v, h, chunk, device)


def _measure(variant: str, n: int, v: int, h: int, chunk: int, device: str) -> dict:
    import torch

    from replaygrpo.grpo import sequence_logprobs_from_hidden, token_logprobs

    torch.manual_seed(0)
    cuda = device == "cuda"
    targets = torch.randint(0, v, (n,), device=device)
    if variant.startswith("logits"):
        logits = torch.randn(1, n, v, device=device).requires_grad_()
    else:
        hidden = torch.randn(n, h, device=device).requires_grad_()
        weight = torch.randn(v, h, device=device).mul_(h ** -0.5).requires_grad_()  # in place: no temporary
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if variant == "logits-naive":
        logp = token_logprobs(logits, targets[None], temperature=1.0, chunk_size=None)
    elif variant == "logits-chunked":
        logp = token_logprobs(logits, targets[None], temperature=1.0, chunk_size=chunk)
    elif variant == "hidden-naive":
        logp = torch.log_softmax((hidden @ weight.T).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    else:
        logp = sequence_logprobs_from_hidden(hidden, weight, targets, temperature=1.0, chunk_size=chunk)
    logp.sum().backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "peak_bytes": int(peak), "value": float(logp.detach().sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1024, help="N: completion tokens in the batch")
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--hidden", type=int, default=1024, help="H (Qwen3-0.6B: 1024)")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.vocab, args.hidden, args.chunk, args.device)))
        return

    results = {}
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--child", variant, "--tokens", str(args.tokens),
                               "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk),
                               "--device", args.device], capture_output=True, text=True,
                              # A fixed mmap threshold: large blocks go back to the OS when freed, so
                              # the resident set follows the live tensors (glibc's dynamic threshold
                              # would keep freed temporaries on the heap and inflate the peak).
                              env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{proc.stderr[-2000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    one = args.tokens * args.vocab * 4
    print(f"cores: {os.cpu_count()}, device: {args.device}, N={args.tokens} tokens, V={args.vocab:,}, "
          f"H={args.hidden}, chunk={args.chunk}; one float32 (N, V) matrix = {one / 2**20:.0f} MiB")
    for start in ("logits", "hidden"):
        naive, chunked = results[f"{start}-naive"], results[f"{start}-chunked"]
        same = abs(naive["value"] - chunked["value"]) <= 1e-3 * max(1.0, abs(naive["value"]))
        print(f"from {start}: naive {naive['peak_bytes'] / 2**20:.0f} MiB, chunked {chunked['peak_bytes'] / 2**20:.0f}"
              f" MiB, naive/chunked {naive['peak_bytes'] / max(chunked['peak_bytes'], 1):.1f}x"
              f" (sum of log-probs agrees: {same})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("child", "json")},
                       "matrix_bytes": one, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
