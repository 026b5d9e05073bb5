"""The markdown of `make bench` (scripts/bench.py): one section per part, and what bounds a missed target."""
from __future__ import annotations

import re
import statistics

from bench_replay_cost import report


def spread(xs: list[float]) -> str:
    """min-max and the sample standard deviation of per-repeat ratios."""
    sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    return f"{min(xs):.2f}-{max(xs):.2f}, sd {sd:.2f}"


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
                       f"(spread {spread(p['ratio_per_repeat'])}) "
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
                "repeats per side: " + ", ".join(f"{p['size']} {p['repeats']}" for p in res["peer"])
                + ". toy = the shipped toy-strong base; 31.5M = the toy lab's Qwen3 at hidden 512, "
                "8 layers, 8 heads / 4 KV heads, MLP 2048, random init (`model.name_or_path=toy "
                "model.warmstart_steps=0`); both sides load the same directory. In the "
                "replaygrpo runs (median per step): " + "; ".join(
                    f"{p['size']}: reward {p['reward']:.2f}, zero-advantage rollouts {100 * p['zero_adv']:.0f}%, "
                    f"truncated at 24 tokens {100 * p['truncated']:.0f}%" for p in res["peer"])
                + ". The random-init 31.5M model never earns a reward, so every advantage is 0 there; its "
                "replaygrpo runs set `trainer.skip_zero_advantage=false` so both trainers forward and "
                "backpropagate every rollout (equal positions but for the shared prompt forward).",
                "", "Reproduce one side: `.venv/bin/replaygrpo train method=grpo trainer.prompts_per_step=8 "
                "trainer.group_size=8 engine.max_new_tokens=24 trainer.eval_every=0 trainer.eval_size=8 "
                "trainer.steps=N [31.5M overrides]` and `.venv/bin/python scripts/bench_trl.py --model-dir "
                "<that model's directory> --steps N --out trl.json` (bench.json records it).", ""]
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
                f" (target ~8: {ok(abs(b['bytes_per_token'] - 8) <= 1)}) |", ""]
        after = re.search(r"reading the drawn tensors .*? median ([\d.]+) ms, dropping the previous draw ([\d.]+) ms"
                          r".*?step \+ read \+ drop: median ([\d.]+) ms", b["stdout"])
        if after:  # the step hands out records whose tensor views are made on first read: keep that work in view
            out += [f"The sample hands out records whose tensor views are made when first read, so part of the "
                    f"work lands after the step: reading the 512 drawn rollouts' tensors, as the update does, "
                    f"takes {after.group(1)} ms and dropping the previous draw {after.group(2)} ms; step + read + "
                    f"drop is {after.group(3)} ms (median of the per-step sums).", ""]
        out += ["```", b["stdout"], "```", "", f"Reproduce: `.venv/bin/{b['cmd']}`.", ""]
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
    if "limits" in res:
        out += ["## 6. Distance to the limit", "",
                "One step's rollouts (G = 8 x 8 prompts, 24 new tokens, every row trained), in one process, "
                "interleaved, medians. Update: `update_step` against one plain forward + backward of the same "
                "rows (prompt + completion, padded, transformers' causal-LM loss on the completion tokens) and "
                "the same AdamW step. Generation: the HF engine against plain decoding of the same tokens (the "
                "same prefill, then one forward per step on the tokens the engine sampled; no softmax, sampling, "
                "stop test or log-prob bookkeeping).", "",
                "| model | update | plain fwd+bwd+AdamW | ratio (per rep) | goal | generate | plain decoding "
                "| ratio (per rep) |", "|---|---|---|---|---|---|---|---|"]
        for r in res["limits"]:
            m = r["median"]
            out.append(f"| {r['size']} | {fmt_ms(m['update'])} | {fmt_ms(m['plain_step'])} "
                       f"| **{r['update_ratio']:.2f}x** ({spread(r['update_ratio_per_rep'])}) "
                       f"| <= 1.15x: {ok(r['update_ratio'] <= 1.15)} | {fmt_ms(m['generate'])} "
                       f"| {fmt_ms(m['plain_decode'])} | **{r['generate_ratio']:.2f}x** "
                       f"({spread(r['generate_ratio_per_rep'])}) |")
        out += ["", "```", *(r["stdout"] for r in res["limits"]), "```", "",
                "Reproduce: " + "; ".join(f"`.venv/bin/{r['cmd']}`" for r in res["limits"]) + ".", ""]
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
                "into fresh memory, and reading each rollout's fields in Python), evict "
                f"{ph.group(2)} ms, sample {ph.group(3)} ms (the priority draw over ~100k slots and 512 records). "
                "The copy is the floor of a store that keeps its own tokens; below it needs an add that takes "
                "the engine's padded batch whole instead of per-rollout records.")
    return ["## What bounds the missed targets", "", *lines, ""] if lines else []
