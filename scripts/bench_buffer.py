"""Time one replay-buffer step at paper scale: add 1,024 + evict + sample 512 of 100k.

Buffer: 100,000 rollouts of 1,000 completion tokens (+ a 64-token prompt shared by
each group of 8), tau_max chosen so the buffer stays at ~100k in steady state.
Prints the median ms per step against the limit (5 ms), per phase, the share spent
in Python's garbage collector, bytes per stored completion token, the core count and
the load average: on a shared machine the timings move with the load, so read them
together. The step is the buffer's three calls. After it, outside the step, the
drawn rollouts' tensors are read as the update reads them (the buffer makes them on
first read) and the previous step's draw is dropped (the loop drops its batch after
compose); both are timed and printed beside the step, with the sum of the three, so
work moved out of the step stays in view. Also printed: the tracked Python objects
one add and one sample make (what the garbage collector has to scan). The last
step's sampled rollouts are then checked to hold exactly the prompt, tokens and
log-probs they were added with.

    .venv/bin/python scripts/bench_buffer.py [--steps 20] [--unit rollout] [--threads 1]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import torch

from replaygrpo.replay import ReplayBuffer
from replaygrpo.records import Rollout

BATCH, GROUP, C, P = 1024, 8, 1000, 64
LIMIT_MS = 5.0  # issue 16: a buffer step at 100k rollouts under 5 ms


def make_step(step: int, ids: torch.Tensor, logp: torch.Tensor, prompts: torch.Tensor) -> list[Rollout]:
    """1,024 rollouts whose completions are row views of padded batch tensors, as an engine
    gives, and whose group shares one prompt tensor, as rollout/step.py's make_rollouts gives."""
    adv = torch.randn(BATCH, generator=torch.Generator().manual_seed(step)).tolist()
    group_prompts = list(prompts)  # one row view per group
    return [
        Rollout(
            prompt_ids=group_prompts[i // GROUP],
            completion_ids=ids[i],
            old_logprobs=logp[i],
            reward=float(a > 0),
            advantage=a,
            birth_step=step,
            prompt_id=i // GROUP,
            group_id=step * BATCH + i // GROUP,
        )
        for i, a in enumerate(adv)
    ]


def check_exact(out: list[Rollout], ids: torch.Tensor, logp: torch.Tensor, prompts: torch.Tensor) -> None:
    """Each rollout holds its group's prompt and, bit for bit, one of its group's rows."""
    for r in out:
        assert torch.equal(r.prompt_ids, prompts[r.prompt_id])
        rows = range(r.prompt_id * GROUP, (r.prompt_id + 1) * GROUP)
        row = next(j for j in rows if torch.equal(r.completion_ids, ids[j]))
        assert torch.equal(r.old_logprobs.view(torch.int32), logp[row].view(torch.int32))


def read_tensors(rollouts: list[Rollout]) -> None:
    """Read every tensor field of each rollout, as the update does."""
    for r in rollouts:
        _ = r.prompt_ids, r.completion_ids, r.old_logprobs, r.behaviour_logprobs


def count_objects(buf: ReplayBuffer, step: int, ids: torch.Tensor, logp: torch.Tensor, prompts: torch.Tensor,
                  g: torch.Generator) -> dict[str, int]:
    """Tracked objects left by one add + evict, one sample of 512 and reading its tensors: gc.get_count()[0]
    counts allocations minus frees of tracked objects while no collection runs."""
    fresh = make_step(step, ids, logp, prompts)
    gc.collect()
    gc.disable()
    try:
        c0 = gc.get_count()[0]
        buf.add(fresh)
        buf.evict(step)
        c1 = gc.get_count()[0]
        out = buf.sample(512, step, g)
        c2 = gc.get_count()[0]
        read_tensors(out)
        c3 = gc.get_count()[0]
    finally:
        gc.enable()
    return {"add + evict": c1 - c0, "sample": c2 - c1, "read": c3 - c2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--unit", choices=["rollout", "group"], default="rollout")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    # The buffer's work is a few vector ops over ~100k scalars plus copies; on a busy
    # 2-core box intra-op threads cost more (barriers) than they save.
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    # One set of batch tensors, reused: the buffer copies what it stores.
    ids = torch.randint(0, 150_000, (BATCH, C), dtype=torch.int32, generator=g)
    logp = -torch.rand(BATCH, C, generator=g)
    prompts = torch.randint(0, 150_000, (BATCH // GROUP, P), dtype=torch.int32, generator=g)
    fill_steps = -(-args.size // BATCH)
    buf = ReplayBuffer(tau_max=fill_steps - 1, alpha=1.0, unit=args.unit)
    t0 = time.perf_counter()
    for s in range(fill_steps):
        buf.add(make_step(s, ids, logp, prompts))
    print(f"filled {len(buf):,} rollouts, {buf.num_tokens:,} tokens in {time.perf_counter() - t0:.1f} s")

    phases: dict[str, list[float]] = {"add": [], "evict": [], "sample": [], "step": [], "read": [], "free": []}
    cpu: list[float] = []
    # Time in the cyclic garbage collector: collections are triggered by the tracked
    # objects made (records, tensor views), and land wherever the count crosses the
    # threshold, so they are summed over the step and over read + free separately.
    gc_ms = [0.0]
    gc_start = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_ms[0] += 1000 * (time.perf_counter() - gc_start[0])

    gc.callbacks.append(on_gc)
    gc_step: list[float] = []
    gc_after: list[float] = []
    out: list[Rollout] = []
    for s in range(fill_steps, fill_steps + args.steps):
        fresh = make_step(s, ids, logp, prompts)  # building records is the engine's cost
        gc_before = gc_ms[0]
        c0, t0 = time.thread_time(), time.perf_counter()
        buf.add(fresh)
        t1 = time.perf_counter()
        buf.evict(s)
        t2 = time.perf_counter()
        new = buf.sample(512, s, g)
        t3, c3 = time.perf_counter(), time.thread_time()
        gc_step.append(gc_ms[0] - gc_before)
        read_tensors(new)  # the update's reads
        t4 = time.perf_counter()
        out = new  # drops the previous step's draw
        t5 = time.perf_counter()
        gc_after.append(gc_ms[0] - gc_before - gc_step[-1])
        for name, dt in (("add", t1 - t0), ("evict", t2 - t1), ("sample", t3 - t2), ("step", t3 - t0),
                         ("read", t4 - t3), ("free", t5 - t4)):
            phases[name].append(1000 * dt)
        cpu.append(1000 * (c3 - c0))  # this thread's CPU time: what the load cannot inflate
        assert len(out) == 512 and all(0 < s - r.birth_step <= buf.tau_max for r in out)
    gc.callbacks.remove(on_gc)
    made = count_objects(buf, fill_steps + args.steps, ids, logp, prompts, g)
    check_exact(out, ids, logp, prompts)  # after the loop, so it warms no cache for the timed part
    ms = phases["step"]
    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, unit: {args.unit}, "
          f"load average: {os.getloadavg()[0]:.1f}")
    print(f"buffer: {len(buf):,} rollouts, {buf.num_tokens:,} completion tokens, {buf.nbytes / 2**20:.0f} MiB")
    med = statistics.median(ms)
    print(f"step (add {BATCH} + evict + sample 512): median {med:.2f} ms, "
          f"min {min(ms):.2f}, max {max(ms):.2f} over {len(ms)} steps")
    print(f"  limit {LIMIT_MS:.0f} ms per step at {args.size:,} rollouts: "
          f"{'met' if med < LIMIT_MS else 'missed'} ({med / LIMIT_MS:.2f}x the limit)")
    print(f"  CPU time of the step (thread): median {statistics.median(cpu):.2f} ms; "
          f"in the garbage collector: mean {statistics.mean(gc_step):.2f} ms")
    print("  median by phase: " + ", ".join(
        f"{k} {statistics.median(phases[k]):.2f} ms" for k in ("add", "evict", "sample")))
    read, free = statistics.median(phases["read"]), statistics.median(phases["free"])
    total = statistics.median(map(sum, zip(phases["step"], phases["read"], phases["free"])))
    print(f"after the step: reading the drawn tensors (the update's first reads) median {read:.2f} ms, "
          f"dropping the previous draw {free:.2f} ms, "
          f"in the garbage collector: mean {statistics.mean(gc_after):.2f} ms; step + read + drop: median {total:.2f} ms")
    print(f"tracked objects made: add + evict {made['add + evict']:,}, sample of 512 {made['sample']:,}, "
          f"reading its tensors {made['read']:,}")
    print(f"bytes per stored completion token: {buf.nbytes / buf.num_tokens:.3f}")


if __name__ == "__main__":
    main()
