"""`make bench`: replaygrpo against TRL, replay's cost, the buffer, the step breakdown, log-prob memory.

Every figure is a ratio against a baseline measured in this same invocation, on this
machine, with its core count and load average printed beside it; per-step times are
medians after warm-up, and the runs being compared are interleaved (A, B, B, A, ...)
so drift in the load hits both. Writes docs/results/bench.md.

1. Peer: TRL's GRPOTrainer (scripts/bench_trl.py) and `replaygrpo train method=grpo`
   on the same model directory, prompts (same order), G=8 x 8 prompts, 24 new tokens,
   temperature 1, lr 1e-4, one optimiser step per generation batch, no KL, token-mean
   loss, float32: at the toy model and at a 31.5M-parameter Qwen3 shape (random init).
2. Replay's cost: `method=replay` vs `method=grpo` (scripts/bench_replay_cost.py).
3. Buffer: scripts/bench_buffer.py (100k rollouts of 1,000 tokens).
4. Step time breakdown of the toy lab (from the replaygrpo runs of 1. and 2.).
5. Peak memory of the chunked log-prob paths at vocab 151,936 (scripts/bench_logprobs_memory.py).

    .venv/bin/python scripts/bench.py [--quick] [--repeats 2] [--only peer,replay,buffer,memory] [--out docs/results/bench.md]

Needs trl (`pip install "trl>=1.16,<2"`, the `bench` extra) for 1; without it 1 is skipped.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replay_cost import PEER, measure, other, report, run_train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SIZES = {
    "toy": [],
    "31.5M": ["model.hidden_size=512", "model.num_layers=8", "model.num_heads=8", "model.num_kv_heads=4",
              "model.intermediate_size=2048", "model.warmstart_steps=0",
              # Random init earns no reward, so every advantage is 0: without this the update would
              # skip every row and the row would compare nothing.
              "trainer.skip_zero_advantage=false"],
}


def med(xs) -> float:
    return float(statistics.median(list(xs)))


def version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import torch

    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "cpu": model,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": version("torch"), "transformers": version("transformers"), "trl": version("trl")}


def load() -> float:
    return os.getloadavg()[0]


def warm_start_dir(overrides: list[str]) -> Path:
    """The model directory replaygrpo trains from for these overrides (built and cached if absent)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from replaygrpo.config import register_configs, to_config
    from replaygrpo.toymodel import warm_start

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = to_config(compose("config", overrides=[*overrides, f"cache_dir={REPO / '.cache'}"]))
    return (REPO / warm_start(cfg)).resolve()


def run_trl(model_dir: Path, steps: int, out: Path) -> dict:
    cmd = [PY, str(REPO / "scripts" / "bench_trl.py"), "--model-dir", str(model_dir), "--steps", str(steps),
           "--prompts", "8", "--group", "8", "--max-new-tokens", "24", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def peer(size: str, steps: int, warmup: int, repeats: int, work: Path) -> dict:
    """replaygrpo and TRL, interleaved; per-step medians after warm-up and the ratio per repeat."""
    model_dir = warm_start_dir(SIZES[size])
    rg_rows: list[list[dict]] = []
    trl_runs: list[dict] = []
    for rep in range(repeats):
        for who in ("rg", "trl") if rep % 2 == 0 else ("trl", "rg"):
            if who == "rg":
                rows = run_train(["method=grpo", *PEER, *SIZES[size]], steps, work, f"peer-{size}-{rep}")
                rg_rows.append(rows[warmup:-1])  # the last step includes the final toy eval
            else:
                r = run_trl(model_dir, steps, work / f"trl-{size}-{rep}.json")
                trl_runs.append({"steps": r["steps"][warmup:], "tokens": r["tokens_generated"][warmup:],
                                 "params": r["params"], "trl_version": r["trl_version"]})
    rg_step = [med(r["time/step"] for r in rows) for rows in rg_rows]
    trl_step = [med(s["step"] for s in run["steps"]) for run in trl_runs]
    rg_all = [r for rows in rg_rows for r in rows]
    trl_all = [s for run in trl_runs for s in run["steps"]]
    rg_tok = med(r["tokens/generated"] for r in rg_all)
    trl_tok = med(t for run in trl_runs for t in run["tokens"])
    rg_s, trl_s = med(r["time/step"] for r in rg_all), med(s["step"] for s in trl_all)
    return {
        "size": size, "model_dir": str(model_dir), "params": trl_runs[0]["params"], "steps": steps,
        "warmup": warmup, "repeats": repeats,
        "rg_s": rg_s, "trl_s": trl_s, "ratio": trl_s / rg_s,
        "ratio_per_repeat": [t / r for t, r in zip(trl_step, rg_step)],
        "ratio_per_token": (trl_s / trl_tok) / (rg_s / rg_tok),
        "rg_tokens": rg_tok, "trl_tokens": trl_tok,
        "reward": med(r["reward/mean"] for r in rg_all), "zero_adv": med(r["batch/zero_adv_frac"] for r in rg_all),
        "truncated": med(r["response/truncated_frac"] for r in rg_all),
        "rg_parts": {k: med(r[f"time/{k}"] for r in rg_all) for k in ("generate", "grade", "update", "sync")}
        | {"other": med(map(other, rg_all))},
        "rg_share": {k: sum(r[f"time/{k}"] for r in rg_all) / sum(r["time/step"] for r in rg_all)
                     for k in ("generate", "grade", "update", "sync")}
        | {"other": sum(map(other, rg_all)) / sum(r["time/step"] for r in rg_all)},
        "trl_parts": {k: med(s[k] for s in trl_all) for k in trl_all[0] if k != "step"},
        "trl_share": {k: sum(s[k] for s in trl_all) / sum(s["step"] for s in trl_all) for k in trl_all[0]
                      if k != "step"},
        "load": load(),
    }


def buffer_bench(quick: bool) -> dict:
    cmd = [PY, str(REPO / "scripts" / "bench_buffer.py"), "--steps", "5" if quick else "20"]
    if quick:
        cmd += ["--size", "20000"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_buffer failed:\n{proc.stderr[-3000:]}")
    text = proc.stdout
    step = re.search(r"step \(add .*?\): median ([\d.]+) ms", text)
    bpt = re.search(r"bytes per stored completion token: ([\d.]+)", text)
    size = re.search(r"buffer: ([\d,]+) rollouts", text)
    return {"cmd": " ".join(["python", *cmd[1:]]).replace(str(REPO) + "/", ""), "stdout": text.strip(),
            "step_ms": float(step.group(1)), "bytes_per_token": float(bpt.group(1)),
            "rollouts": int(size.group(1).replace(",", ""))}


def memory_bench(quick: bool) -> dict:
    args = ["--tokens", "256", "--hidden", "256", "--chunk", "64"] if quick else ["--tokens", "2048", "--hidden", "1024"]
    out = Path(tempfile.mkdtemp(prefix="bench_mem_")) / "mem.json"
    cmd = [PY, str(REPO / "scripts" / "bench_logprobs_memory.py"), *args, "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_logprobs_memory failed:\n{proc.stderr[-3000:]}")
    r = json.loads(out.read_text())
    r["stdout"] = proc.stdout.strip()
    r["cmd"] = "python scripts/bench_logprobs_memory.py " + " ".join(args)
    return r


def fmt_ms(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def ok(flag: bool) -> str:
    return "met" if flag else "**not met**"


def render(info: dict, res: dict, wall: float, quick: bool) -> str:
    out = [
        "# Benchmarks (`make bench`)",
        "",
        f"Written by `scripts/bench.py` on {info['date']} in {wall / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in info["took"].items()) + ")"
        + (" (**--quick: smoke sizes, not the figures**)" if quick else "") + ".",
        f"Machine: {info['cores']} cores ({info['usable_cores']} usable, torch threads {info['torch_threads']}), "
        f"{info['cpu']}; load average {info['load_start']:.1f} at start, {info['load_end']:.1f} at end. "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}.",
        "",
        "Every figure is a ratio of two measurements taken in this one invocation, on this machine; times "
        "are medians over steps after warm-up, pooled over interleaved repeats. Absolute times move with "
        "the machine and its load; the ratios are what to compare. Reproduce everything with `make bench` "
        "(= `.venv/bin/python scripts/bench.py`), or each part with the command given under it.",
        "",
    ]
    if "peer" in res:
        out += ["## 1. Peer: replaygrpo vs TRL GRPOTrainer at equal work", "",
                "Same model directory and tokenizer, same prompts in the same order, G = 8 completions x 8 "
                "prompts, at most 24 new tokens, temperature 1 (top-p 1, top-k off), AdamW lr 1e-4, grad clip 1, "
                "one optimiser step per generation batch, no KL (TRL beta=0, no reference model), token-mean "
                "loss (TRL loss_type=\"dapo\"), clip 0.2, group-std advantages, float32, no gradient "
                "checkpointing (both TRL defaults turned off), one policy iteration per batch. Step time: "
                "replaygrpo's `time/step` from metrics.jsonl; TRL's on_step_begin -> on_step_end (its logging "
                "falls outside, which favours TRL slightly). The ratio is TRL s/step / replaygrpo s/step "
                "(> 1: replaygrpo faster). Where replaygrpo does less work for the same result, that is the "
                "point of the comparison: its sampler forwards each prompt once for its G completions (TRL's "
                "`generate` prefills every copy), its update forwards each distinct prompt once and the "
                "completions on its KV cache (`trainer.update_layout=shared_prefix`), and it leaves zero-advantage rollouts, "
                "whose gradient is exactly 0, out of the forward (`trainer.skip_zero_advantage`).", "",
                "| model | params | replaygrpo s/step | TRL s/step | ratio | per repeat | gen tokens/step (rg / TRL) "
                "| ratio per generated token | target | |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for p in res["peer"]:
            target = 1.5 if p["size"] == "toy" else 1.0
            out.append(f"| {p['size']} | {p['params'] / 1e6:.2f}M | {fmt_ms(p['rg_s'])} | {fmt_ms(p['trl_s'])} "
                       f"| **{p['ratio']:.2f}x** | {', '.join(f'{x:.2f}' for x in p['ratio_per_repeat'])} "
                       f"| {p['rg_tokens']:.0f} / {p['trl_tokens']:.0f} | {p['ratio_per_token']:.2f}x "
                       f"| >= {target:.1f}x | {ok(p['ratio'] >= target)} |")
        out += ["", "Where the time goes (median seconds per step; share of the summed step time):", "",
                "| model | replaygrpo: generate / grade / update / sync / other | TRL: generate / reward / "
                "scoring / loss forward / backward / optimiser |", "|---|---|---|"]
        for p in res["peer"]:
            rgp = " / ".join(f"{fmt_ms(p['rg_parts'][k])} ({100 * p['rg_share'][k]:.0f}%)"
                             for k in ("generate", "grade", "update", "sync", "other"))
            trp = " / ".join(f"{fmt_ms(p['trl_parts'][k])} ({100 * p['trl_share'][k]:.0f}%)"
                             for k in ("generate", "reward", "score_other", "loss_forward", "backward", "optimizer"))
            out.append(f"| {p['size']} | {rgp} | {trp} |")
        out += ["", "Steps per run: " + ", ".join(
                    f"{p['size']} {p['steps']} ({p['warmup']} warm-up dropped)" for p in res["peer"])
                + "; replaygrpo's last step, which holds the final toy eval, is dropped too; interleaved "
                "repeats per side: " + ", ".join(f"{p['size']} {p['repeats']}" for p in res["peer"]) + ". 31.5M = the toy lab's Qwen3 at hidden 512, "
                "8 layers, 8 heads / 4 KV heads, MLP 2048, random init (`model.warmstart_steps=0`). In the "
                "replaygrpo runs (median per step): " + "; ".join(
                    f"{p['size']}: reward {p['reward']:.2f}, zero-advantage rollouts {100 * p['zero_adv']:.0f}%, "
                    f"truncated at 24 tokens {100 * p['truncated']:.0f}%" for p in res["peer"])
                + ". The random-init 31.5M model never earns a reward, so every advantage is 0 there; its "
                "replaygrpo runs set `trainer.skip_zero_advantage=false` so both trainers forward and "
                "backpropagate every rollout (equal positions but for the shared prompt forward).",
                "", "Reproduce one side: `.venv/bin/replaygrpo train method=grpo trainer.prompts_per_step=8 "
                "trainer.group_size=8 engine.max_new_tokens=24 trainer.eval_every=0 trainer.eval_size=8 "
                "trainer.steps=N [31.5M overrides]` and `.venv/bin/python scripts/bench_trl.py --model-dir "
                "<its warm-start dir> --steps N --out trl.json`.", ""]
    if "replay" in res:
        r = res["replay"]
        out += ["## 2. Replay's cost", "",
                "`method=replay` (tau_max 2, replay ratio 1, alpha 1, fresh-anchored) against `method=grpo` on "
                "the toy lab at G = 8 x 8 prompts, 24 new tokens. Extra time per step is the difference of the "
                "median non-generation time (`time/step - time/generate - time/grade`: the update, which holds "
                "evict and compose, the sync and the rest, which holds buffer.add); generation and grading do "
                "no replay work and only add length noise. Replay steps count once the buffer fills a full "
                "replay batch.", "",
                "```", report(r), "```", "",
                "| ratio | value | target |", "|---|---|---|",
                f"| extra time / (grpo update time per forwarded token x extra tokens) | **{r['ratio']:.2f}** "
                f"| <= 1.10: {ok(r['ratio'] <= 1.10)} |",
                f"| extra time / marginal update time of the extra rollouts (in-process update_step) "
                f"| {r['ratio_marginal']:.2f} | <= 1.10: {ok(r['ratio_marginal'] <= 1.10)} |",
                f"| same as the first, whole step (generation noise included) | {r['ratio_full_step']:.2f} | - |",
                "", f"Reproduce: `.venv/bin/python scripts/bench_replay_cost.py --steps {r['steps']} "
                f"--repeats {r['repeats']}`.", ""]
    if "buffer" in res:
        b = res["buffer"]
        out += ["## 3. Replay buffer at paper scale", "",
                f"| step (add 1,024 + evict + sample 512) at {b['rollouts']:,} rollouts | bytes per stored token |",
                "|---|---|",
                f"| **{b['step_ms']:.2f} ms** (target < 5 ms: {ok(b['step_ms'] < 5)}) | **{b['bytes_per_token']:.2f}**"
                f" (target ~8: {ok(abs(b['bytes_per_token'] - 8) <= 1)}) |", "",
                "```", b["stdout"], "```", "", f"Reproduce: `.venv/bin/{b['cmd']}`.", ""]
    if "breakdown" in res:
        out += ["## 4. Step time breakdown (toy lab)", "",
                "other = time/step - generate - grade - update - sync (metrics, buffer.add; the final-eval "
                "step is excluded). Shares are of the summed step time over the steady steps; target: other "
                "under 5% of the step.", "",
                "| run | step | generate | grade | update | sync | other | other share | target |",
                "|---|---|---|---|---|---|---|---|---|"]
        for name, b in res["breakdown"].items():
            out.append(f"| {name} | {fmt_ms(b['step'])} | " + " | ".join(
                f"{fmt_ms(b['parts'][k])} ({100 * b['share'][k]:.0f}%)" for k in ("generate", "grade", "update",
                                                                                  "sync", "other"))
                + f" | **{100 * b['share']['other']:.1f}%** | {ok(b['share']['other'] < 0.05)} |")
        out += ["", "Reproduce: the replaygrpo runs of sections 1 (toy) and 2; each row is from their metrics.jsonl.",
                ""]
    if "memory" in res:
        m = res["memory"]
        a = m["args"]
        rr = m["results"]
        out += ["## 5. Log-prob memory at Qwen3's vocabulary", "",
                f"Peak memory added by forward + backward of the log-probs of N = {a['tokens']} tokens at "
                f"V = {a['vocab']:,} (one float32 (N, V) matrix = {m['matrix_bytes'] / 2**20:.0f} MiB), "
                f"H = {a['hidden']}, chunk {a['chunk']}, on {a['device']} (peak RSS growth, one subprocess per "
                "variant). 'from logits' starts from logits that exist (the logits' own gradient, one (N, V) "
                "matrix, is counted on both sides); 'from hidden' starts from hidden states and the lm_head "
                "(the logits are counted; the lm_head gradient, (V, H), is counted on both sides).", "",
                "| start | naive | chunked | naive / chunked |", "|---|---|---|---|"]
        for start, fn in (("logits", "token_logprobs"), ("hidden", "sequence_logprobs_from_hidden")):
            n, c = rr[f"{start}-naive"]["peak_bytes"], rr[f"{start}-chunked"]["peak_bytes"]
            out.append(f"| {start} (`{fn}`) | {n / 2**20:.0f} MiB | {c / 2**20:.0f} MiB | **{n / max(c, 1):.1f}x** |")
        out += ["", f"Reproduce: `.venv/bin/{m['cmd']}`.", ""]
    out += bounds(res)
    return "\n".join(out)


def bounds(res: dict) -> list[str]:
    """For each missed target, what this run's own figures say bounds it."""
    lines: list[str] = []
    for p in res.get("peer", []):
        target = 1.5 if p["size"] == "toy" else 1.0
        if p["ratio"] >= target:
            continue
        budget = p["trl_s"] / target
        fixed = p["rg_parts"]["generate"] + p["rg_parts"]["grade"]
        trl_update = p["trl_parts"]["loss_forward"] + p["trl_parts"]["backward"] + p["trl_parts"]["optimizer"]
        lines.append(
            f"- Peer, {p['size']}: {target:.1f}x needs replaygrpo at <= {fmt_ms(budget)}/step. Generation takes "
            f"{fmt_ms(p['rg_parts']['generate'])} (TRL {fmt_ms(p['trl_parts']['generate'])}); with grading it "
            f"leaves {fmt_ms(max(budget - fixed, 0))} for the update, which takes {fmt_ms(p['rg_parts']['update'])} "
            f"(TRL's loss forward + backward + optimiser: {fmt_ms(trl_update)}).")
    r = res.get("replay")
    if r:
        m = r["micro"]
        bookkeeping = f"replay's own bookkeeping is {m['bookkeeping_s'] * 1000:.2f} ms a step"
        prompts = (
            "replayed rollouts come from many groups, so their prompts are not shared G ways as the fresh ones' "
            f"are (the replay batch forwards {m['padded_fresh_plus_replay'] / max(m['padded_fresh'], 1):.2f}x the "
            f"positions for {(m['fresh_tokens'] + m['extra_tokens']) / m['fresh_tokens']:.2f}x the completion tokens)")
        if r["ratio_marginal"] > 1.10:
            lines.append(
                f"- Replay's cost, in-process marginal ({r['ratio_marginal']:.2f}): the in-process update of the "
                f"extra rollouts costs {r['update_s_per_token_marginal'] * 1e6:.0f} us per completion token, against "
                f"{r['update_s_per_token_grpo'] * 1e6:.0f} us per forwarded token in the grpo runs, so the two "
                "measures disagree by about that factor (the in-process one times one fixed batch, warm and "
                f"repeated, whose fresh part has {m.get('fresh_zero_adv', 0)} of {m['fresh_rollouts']} rollouts with "
                f"advantage 0); the first row is the one taken from training steps as they run. {bookkeeping.capitalize()}; "
                f"what replayed rollouts cost beyond their completion tokens is their prompts: {prompts}.")
        if r["ratio"] > 1.10:
            lines.append(
                f"- Replay's cost ({r['ratio']:.2f} by the grpo per-token rate): {bookkeeping} "
                f"({100 * r['bookkeeping_share']:.1f}% of the extra update); the rest is the update itself: {prompts}; "
                f"the directly measured marginal cost of the extra rollouts gives {r['ratio_marginal']:.2f}.")
    b = res.get("buffer")
    if b and b["step_ms"] >= 5:
        ph = re.search(r"add ([\d.]+) ms, evict ([\d.]+) ms, sample ([\d.]+) ms", b["stdout"])
        if ph:
            lines.append(
                f"- Buffer ({b['step_ms']:.2f} ms): add {ph.group(1)} ms (one copy of 1,024 x 1,000 tokens = 8 MB "
                "into the store, and reading each rollout's fields in Python), evict "
                f"{ph.group(2)} ms, sample {ph.group(3)} ms (about 1,000 tensor views for the 512 rollouts it returns, "
                "freeing the previous step's, and the priority draw; by cProfile, mostly per-view overhead). Under 5 ms needs an interface "
                "without per-rollout objects: add taking one packed batch, and the update reading the store by "
                "index instead of through Rollout views.")
    return ["## What bounds the missed targets", "", *lines, ""] if lines else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke sizes (seconds per part), not the figures")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved repeats per side in the peer runs (default: 4 at toy size, 2 at 31.5M)")
    ap.add_argument("--replay-repeats", type=int, default=3, help="interleaved repeats per method in the replay runs")
    ap.add_argument("--only", default="peer,replay,buffer,memory")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "bench.md"))
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench.json"),
                    help="also write every measurement as JSON here (re-render with --from-json)")
    ap.add_argument("--from-json", default=None, help="re-render --out from a --json of an earlier run; run nothing")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        info = saved["machine"]
        wall = info.get("wall", sum(info.get("took", {}).values()))
        Path(args.out).write_text(render(info, saved["results"], wall, saved.get("quick", False)) + "\n")
        print(f"wrote {args.out} from {args.from_json}")
        return
    parts = set(args.only.split(","))
    t_start = time.perf_counter()
    info = machine() | {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "load_start": load()}
    print(f"cores: {info['cores']} ({info['usable_cores']} usable), torch threads {info['torch_threads']}, "
          f"{info['cpu']}, load average {info['load_start']:.1f}; torch {info['torch']}, "
          f"transformers {info['transformers']}, trl {info['trl']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_"))
    res: dict = {}
    steps = {"toy": (10, 2) if args.quick else (40, 5), "31.5M": (4, 1) if args.quick else (8, 2)}
    took: dict[str, float] = {}
    if "peer" in parts:
        if info["trl"] == "not installed":
            print("trl is not installed: skipping the peer comparison (pip install 'trl>=1.16,<2')", flush=True)
        else:
            res["peer"] = []
            for size in SIZES:
                n, w = steps[size]
                t0 = time.perf_counter()
                reps = args.repeats or (4 if size == "toy" else 2)
                p = peer(size, n, w, 1 if args.quick else reps, work)
                took[f"peer {size}"] = time.perf_counter() - t0
                res["peer"].append(p)
                print(f"[peer {size}, {p['params'] / 1e6:.2f}M params] replaygrpo {fmt_ms(p['rg_s'])}/step, "
                      f"TRL {fmt_ms(p['trl_s'])}/step -> {p['ratio']:.2f}x (per repeat "
                      f"{', '.join(f'{x:.2f}' for x in p['ratio_per_repeat'])}); generated tokens/step "
                      f"{p['rg_tokens']:.0f} vs {p['trl_tokens']:.0f}; load {p['load']:.1f}", flush=True)
    if "replay" in parts:
        n, w = (10, 3) if args.quick else (50, 5)
        t0 = time.perf_counter()
        r = measure(n, args.replay_repeats, w, PEER, 4 if args.quick else 20)
        took["replay"] = time.perf_counter() - t0
        res["replay"] = r
        print("[replay cost]\n" + report(r), flush=True)
    if "peer" in res or "replay" in res:
        res["breakdown"] = {}
        if "peer" in res:
            p = res["peer"][0]
            res["breakdown"]["grpo (section 1 runs)"] = {"step": p["rg_s"], "parts": p["rg_parts"],
                                                        "share": p["rg_share"]}
        if "replay" in res:
            for name in ("grpo", "replay"):
                b = res["replay"][f"{name}_breakdown"]
                res["breakdown"][f"{name} (section 2 runs)"] = b
        for name, b in res["breakdown"].items():
            print(f"[breakdown {name}] step {fmt_ms(b['step'])}: " + ", ".join(
                f"{k} {100 * b['share'][k]:.1f}%" for k in ("generate", "grade", "update", "sync", "other")),
                flush=True)
    if "buffer" in parts:
        t0 = time.perf_counter()
        res["buffer"] = buffer_bench(args.quick)
        took["buffer"] = time.perf_counter() - t0
        print(f"[buffer] {res['buffer']['step_ms']:.2f} ms/step at {res['buffer']['rollouts']:,} rollouts, "
              f"{res['buffer']['bytes_per_token']:.2f} bytes/token", flush=True)
    if "memory" in parts:
        t0 = time.perf_counter()
        res["memory"] = memory_bench(args.quick)
        took["memory"] = time.perf_counter() - t0
        print("[memory]\n" + res["memory"]["stdout"], flush=True)
    info["load_end"] = load()
    info["took"] = took
    info["wall"] = time.perf_counter() - t_start
    wall = time.perf_counter() - t_start
    text = render(info, res, wall, args.quick)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": res, "quick": args.quick}, indent=2,
                                              default=str))
    print(f"wrote {args.out} in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
