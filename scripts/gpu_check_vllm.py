"""The vLLM mode of scripts/gpu_check.sh: instrument a real `replaygrpo train` run, then judge it.

`run ARGS...` trains through the CLI (`replaygrpo.cli.main`) in this process with the engine
and the update wrapped to record, per step: GPU memory (torch's allocated and reserved, and
the device's used memory from `cudaMemGetInfo`) at engine start, before and after sleep, after
the sync (engine awake); the engine's start and sync times; the prompt and completion tokens
of each generate call and of each update. Events go to $GPU_CHECK_EVENTS (JSON lines).

`summary METRICS EVENTS OUT PARAMS PEAK [TWO_RANK_RC]` turns metrics.jsonl and the events into
summary.json and a one-page summary.md with a pass/fail verdict per property.

Nothing here has run on a GPU yet; tests/test_gpu_check.py runs both halves on CPU.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

GIB = 2**30


def memory() -> dict[str, float]:
    """GiB: torch's allocated and reserved memory, and the device's used memory (all processes'
    view of this GPU: the engine's sleep-mode pool is outside torch's counters)."""
    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"allocated": torch.cuda.memory_allocated() / GIB, "reserved": torch.cuda.memory_reserved() / GIB,
            "device_used": (total - free) / GIB}


class Recorder:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, event: str, **data: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"event": event, "t": time.time(), "memory": memory(), **data}) + "\n")


def instrument(record: Recorder) -> None:
    """Wrap the vLLM engine and the update step so that each phase leaves an event."""
    from replaygrpo import train as train_mod
    from replaygrpo.rollout import vllm_engine

    engine_cls = vllm_engine.VLLMEngine
    init, sleep, sync, generate = engine_cls.__init__, engine_cls.sleep, engine_cls.sync_weights, engine_cls.generate

    def timed_init(self, *a, **k):
        record("engine_build_start")
        t0 = time.perf_counter()
        init(self, *a, **k)
        record("engine_built", seconds=time.perf_counter() - t0, sleep_mode=self.sleep_supported)

    def timed_sleep(self):
        record("before_sleep")
        sleep(self)
        record("after_sleep")

    def timed_sync(self, model):
        t0 = time.perf_counter()
        sync(self, model)
        record("after_sync", seconds=time.perf_counter() - t0, **self.metrics())

    def counted_generate(self, prompts, params):
        t0 = time.perf_counter()
        out = generate(self, prompts, params)
        record("generate", seconds=time.perf_counter() - t0, prompt_tokens=sum(len(p) * params.n for p in prompts),
               completion_tokens=sum(int(c.token_ids.numel()) for g in out for c in g), greedy=params.temperature == 0)
        return out

    update = train_mod.update

    def counted_update(model, optimizer, batch, *a, **k):
        t0 = time.perf_counter()
        result = update(model, optimizer, batch, *a, **k)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rows = batch.rollouts
        record("update", seconds=time.perf_counter() - t0,
               prompt_tokens=sum(int(r.prompt_ids.numel()) for r in rows),
               completion_tokens=sum(int(r.completion_ids.numel()) for r in rows))
        return result

    engine_cls.__init__, engine_cls.sleep, engine_cls.sync_weights = timed_init, timed_sleep, timed_sync
    engine_cls.generate = counted_generate
    train_mod.update = counted_update


def summarize(rows: list[dict[str, Any]], events: list[dict[str, Any]], params: int, peak_flops: float | None,
              two_rank_rc: int | None = None, max_gap: float = 0.5, min_tracking: float = 0.5) -> dict[str, Any]:
    """Figures and a pass/fail verdict per property from metrics rows and recorded events."""
    def of(name: str) -> list[dict[str, Any]]:
        return [e for e in events if e["event"] == name]

    gens = [e for e in of("generate") if not e["greedy"]][1:]  # the first call holds the warm-up
    upds = of("update")[1:]
    syncs = of("after_sync")
    s: dict[str, Any] = {"steps_done": len(rows), "params": params}
    built = of("engine_built")
    if built:
        s["engine_start_s"] = built[0]["seconds"]
        s["sleep_mode"] = built[0]["sleep_mode"]
    s["memory_gib"] = {e["event"]: e["memory"] for e in events
                       if e["event"] in ("engine_build_start", "engine_built", "before_sleep", "after_sleep", "after_sync")}
    slept = [(b["memory"].get("device_used"), a["memory"].get("device_used"))
             for b, a in zip(of("before_sleep"), of("after_sleep"))]
    s["sleep_frees_gib"] = statistics.median(b - a for b, a in slept) if slept and slept[0][0] is not None else None
    if syncs:
        s["sync_s_median"] = statistics.median(e["seconds"] for e in syncs)
        s["logprob_gap_max"] = max(e.get("sync/logprob_gap", 0.0) for e in syncs)
        tracked = [e["sync/tracking"] for e in syncs if "sync/tracking" in e]
        s["tracking_min"] = min(tracked) if tracked else None
        s["probe_shift_median"] = statistics.median(e["sync/probe_shift"] for e in syncs if "sync/probe_shift" in e) \
            if tracked else None
    if gens:
        gen_tok = sum(e["completion_tokens"] for e in gens)
        s["generation_tokens_per_s"] = gen_tok / sum(e["seconds"] for e in gens)
        s["longest_completion_tokens_per_call"] = max(e["completion_tokens"] for e in gens)
    if upds:
        tok = sum(e["prompt_tokens"] + e["completion_tokens"] for e in upds)
        secs = sum(e["seconds"] for e in upds)
        s["update_tokens_per_s"] = tok / secs
        # 6 N per trained token, prompt tokens included (they are forwarded and back-propagated through)
        s["update_mfu"] = 6 * params * tok / secs / peak_flops if peak_flops else None
    verdict = {
        "training ran to the end": len(rows) > 0 and (not rows or rows[-1].get("step") == len(rows)),
        "engine built and sampled": bool(built) and bool(gens),
        "sleep frees memory": None if s.get("sleep_frees_gib") is None or not s.get("sleep_mode")
        else s["sleep_frees_gib"] > 1.0,
        "post-sync gap below engine.max_logprob_gap": bool(syncs) and s["logprob_gap_max"] <= max_gap,
        "engine tracks the trainer (sync/tracking)": None if not syncs or s.get("tracking_min") is None
        else s["tracking_min"] >= min_tracking,
        "two-rank FSDP2 step": None if two_rank_rc is None else two_rank_rc == 0,
    }
    s["verdict"] = verdict
    s["pass"] = all(v is not False for v in verdict.values())
    return s


def render(s: dict[str, Any]) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = ["# replaygrpo gpu_check (vllm)", "", f"**{'PASS' if s['pass'] else 'FAIL'}**", "",
             "| property | verdict |", "|---|---|"]
    lines += [f"| {k} | {'n/a' if v is None else 'pass' if v else 'FAIL'} |" for k, v in s["verdict"].items()]
    lines += ["", "| quantity | value |", "|---|---|",
              f"| steps done | {s['steps_done']} |",
              f"| engine start | {fmt(s.get('engine_start_s'), '.1f')} s |",
              f"| sync (in place) median | {fmt(s.get('sync_s_median'), '.2f')} s |",
              f"| post-sync gap, max | {fmt(s.get('logprob_gap_max'), '.3g')} |",
              f"| sync/tracking min, sync/probe_shift median | {fmt(s.get('tracking_min'), '.3f')}, "
              f"{fmt(s.get('probe_shift_median'), '.3g')} |",
              f"| memory freed by sleep (device, median) | {fmt(s.get('sleep_frees_gib'), '.1f')} GiB |",
              f"| generation tokens/s | {fmt(s.get('generation_tokens_per_s'), ',.0f')} |",
              f"| completion tokens of the longest call | {fmt(s.get('longest_completion_tokens_per_call'), ',')} |",
              f"| update tokens/s (prompt + completion) | {fmt(s.get('update_tokens_per_s'), ',.0f')} |",
              f"| update MFU (6 N, prompt + completion tokens) | "
              f"{fmt(s.get('update_mfu') and 100 * s['update_mfu'], '.1f')} % |"]
    lines += ["", "| phase | allocated | reserved | device used (GiB) |", "|---|---|---|---|"]
    for phase, m in s["memory_gib"].items():
        lines.append(f"| {phase} (last) | {fmt(m.get('allocated'), '.1f')} | {fmt(m.get('reserved'), '.1f')} | "
                     f"{fmt(m.get('device_used'), '.1f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:
        instrument(Recorder(os.environ["GPU_CHECK_EVENTS"]))
        from replaygrpo.cli import main as cli_main

        sys.argv = ["replaygrpo", "train", *argv[1:]]
        cli_main()
        return 0
    if argv[:1] == ["summary"]:
        metrics, events, out, params, peak = argv[1:6]
        two = int(argv[6]) if len(argv) > 6 and argv[6] != "" else None
        load = lambda p: [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()] \
            if Path(p).exists() else []  # noqa: E731
        s = summarize(load(metrics), load(events), int(params), float(peak) * 1e12 if peak else None, two)
        Path(out, "summary.json").write_text(json.dumps(s, indent=2) + "\n")
        text = render(s)
        Path(out, "summary.md").write_text(text)
        print(text)
        return 0 if s["pass"] else 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
