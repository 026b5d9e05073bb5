"""Replay's cost: `method=replay` against `method=grpo` at equal G and prompts per step.

Two measurements, both in this one invocation:

1. Training runs, `replaygrpo train method=grpo` and `method=replay` (the paper's
   tau_max 2, ratio 1, alpha 1), each `--repeats` times, interleaved (grpo, replay,
   grpo, replay, ...) so drift in the machine's load hits both. Per step, the part
   that replay can add work to is `time/step - time/generate - time/grade` (the update,
   which includes evict + compose, the sync, and the rest, which includes buffer.add);
   generation and grading are replay-free and only add noise (they move with the
   completion lengths of a policy that learns differently).
2. The pure update cost of the extra tokens, in-process: `update_step` on a batch of
   the step's fresh rollouts vs the same batch plus as many replayed rollouts
   (rollouts of an earlier generation, ages 1-2), interleaved, medians.

Ratios (1.00 = replay costs exactly its extra update tokens; target <= 1.10):

    extra time per step / (update time per forwarded token in the grpo run x extra tokens)
    extra time per step / (measured update time of the extra rollouts, from 2.)

The first divides the grpo update (fixed costs included) by its tokens; the second
is the marginal cost measured directly and is the stricter of the two when the
update has fixed per-step costs.

    .venv/bin/python scripts/bench_replay_cost.py [--steps 60] [--repeats 2] [--json out.json] [OVERRIDES...]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEER = ["trainer.prompts_per_step=8", "trainer.group_size=8", "engine.max_new_tokens=24"]
QUIET = ["trainer.eval_every=0", "trainer.eval_size=8", "checkpoint.every=0"]


def run_train(overrides: list[str], steps: int, workdir: Path, name: str) -> list[dict]:
    """`replaygrpo train` in a subprocess from the repo root; the metrics.jsonl rows."""
    run_dir = workdir / name
    cmd = [sys.executable, "-m", "replaygrpo", "train", *overrides, *QUIET, f"trainer.steps={steps}",
           f"hydra.run.dir={run_dir}", "overwrite=true"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def steady(rows: list[dict], warmup: int) -> list[dict]:
    """Drop the warm-up steps and the last step (it includes the final toy eval)."""
    return rows[warmup:-1]


def nongen(r: dict) -> float:
    return r["time/step"] - r["time/generate"] - r["time/grade"]


def other(r: dict) -> float:
    """What the four timed phases leave of the step (metrics, buffer.add, the final eval)."""
    return r["time/step"] - r["time/generate"] - r["time/grade"] - r["time/update"] - r["time/sync"]


def breakdown(rows: list[dict]) -> dict:
    """Median step and phases, and each phase's share of the summed step time."""
    total = sum(r["time/step"] for r in rows)
    phases = ("generate", "grade", "update", "sync")
    return {"step": med(r["time/step"] for r in rows),
            "parts": {k: med(r[f"time/{k}"] for r in rows) for k in phases} | {"other": med(map(other, rows))},
            "share": {k: sum(r[f"time/{k}"] for r in rows) / total for k in phases}
            | {"other": sum(map(other, rows)) / total}}


def med(xs) -> float:
    return float(statistics.median(list(xs)))


def marginal_update_cost(overrides: list[str], reps: int) -> dict:
    """Median update_step time on the fresh batch and on fresh + as many replayed, in-process."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from replaygrpo.config import register_configs
    from replaygrpo.data.prompts import render
    from replaygrpo.data.train_sets import load_train_set
    from replaygrpo.forward import CompletionBatch
    from replaygrpo.grading import GradingPool
    from replaygrpo.methods import METHODS, with_pi_old
    from replaygrpo.model import end_of_text_id
    from replaygrpo.records import Rollout, SamplingParams, UpdateBatch
    from replaygrpo.rollout import build_engine
    from replaygrpo.rollout.step import make_rollouts
    from replaygrpo.train import load_policy, seed_everything
    from replaygrpo.update import UpdateOptions, update_step
    from replaygrpo.variants import load_config

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = load_config(compose("config", overrides=[*overrides, f"cache_dir={REPO / '.cache'}"]))
    seed_everything(cfg.seed)
    t, e, lo = cfg.trainer, cfg.engine, cfg.loss
    model, tok, _ = load_policy(cfg)
    eos = end_of_text_id(model, tok)
    engine = build_engine("hf", model, e, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    opts = UpdateOptions.from_config(cfg, tok.pad_token_id, autocast_dtype=None)
    problems = load_train_set(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    grader = GradingPool(num_workers=0)

    def rollouts(batch: int, birth: int) -> list[Rollout]:
        """Steps 1-4 of the loop (the same `make_rollouts`) on the batch-th block of prompts."""
        idx = list(range(batch * t.prompts_per_step, (batch + 1) * t.prompts_per_step))
        ids = [tok(render(cfg.data.template, problems[i].question), add_special_tokens=False)["input_ids"]
               for i in idx]
        params = SamplingParams(n=t.group_size, temperature=e.temperature, max_new_tokens=e.max_new_tokens, seed=batch)
        return make_rollouts(engine, grader, tok, ids, [problems[i].gold for i in idx], idx, params, step=birth,
                             first_group=1000 * batch, adv_scale=lo.adv_scale).rollouts

    fresh = rollouts(0, birth=2)
    old = rollouts(1, birth=0) + rollouts(2, birth=1)
    # As many replayed rollouts as fresh ones (replay_ratio 1), non-zero advantage as the buffer keeps.
    replayed = [r for r in old if r.advantage != 0][:len(fresh)]
    if len(replayed) < len(fresh):
        replayed += [r for r in old if r.advantage == 0][:len(fresh) - len(replayed)]

    def once(batch: list[Rollout], n_fresh: int) -> float:
        t0 = time.perf_counter()
        update_step(model, opt, UpdateBatch(batch, n_fresh), opts)
        return time.perf_counter() - t0

    base, both = [], []
    for _ in range(2):  # warm-up
        once(fresh, len(fresh))
        once(fresh + replayed, len(fresh))
    for _ in range(reps):
        base.append(once(fresh, len(fresh)))
        both.append(once(fresh + replayed, len(fresh)))
    grader.close()

    # Replay's own bookkeeping, as the loop does it each step: evict, compose (sample
    # R of the buffer), new records with the update's pi_old, add the step's rollouts.
    replay = METHODS.get("replay").build(cfg.replay)
    gen = torch.Generator().manual_seed(0)
    books = []
    batches = [fresh, old[:len(fresh)], old[len(fresh):]]
    for step in range(3 + reps):
        new = [dataclasses.replace(r, birth_step=step) for r in batches[step % 3]]
        t0 = time.perf_counter()
        replay.evict(step)
        used, rep = replay.compose(new, step, gen)
        replay.store(with_pi_old(new, used, [r.old_logprobs for r in used]))
        if step >= 3:  # the buffer holds tau_max steps from here on
            books.append(time.perf_counter() - t0)

    def padded(batch: list[Rollout]) -> int:
        """Positions the update forwards (distinct prompts once + completions, padding included)."""
        rows = [r for r in batch if r.advantage != 0]
        if not rows:
            return 0
        return CompletionBatch.build([r.prompt_ids for r in rows], [r.completion_ids for r in rows], 0).positions()

    return {"fresh_rollouts": len(fresh), "replayed_rollouts": len(replayed),
            "fresh_zero_adv": sum(r.advantage == 0 for r in fresh),
            "fresh_tokens": sum(r.num_tokens for r in fresh), "extra_tokens": sum(r.num_tokens for r in replayed),
            "padded_fresh": padded(fresh), "padded_fresh_plus_replay": padded(fresh + replayed),
            "update_fresh_s": med(base), "update_fresh_plus_replay_s": med(both),
            "extra_update_s": med(b - a for a, b in zip(base, both)), "bookkeeping_s": med(books)}


def update_rate(rows: list[dict]) -> float:
    """Median update seconds per forwarded token, over the steps that forwarded any (a step whose every
    group has one reward forwards nothing and only steps the optimiser)."""
    return med(r["time/update"] / r["tokens/forwarded"] for r in rows if r["tokens/forwarded"] > 0)


def measure(steps: int, repeats: int, warmup: int, overrides: list[str], micro_reps: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_replay_"))
    runs: dict[str, list[list[dict]]] = {"grpo": [], "replay": []}
    for rep in range(repeats):
        for method in ("grpo", "replay") if rep % 2 == 0 else ("replay", "grpo"):
            rows = run_train([f"method={method}", *overrides], steps, work, f"{method}{rep}")
            runs[method].append(steady(rows, warmup))
    g = [r for rows in runs["grpo"] for r in rows]
    # Steady state: the buffer supplies a full replay batch (early steps fill it).
    rp_all = [r for rows in runs["replay"] for r in rows]
    rp = [r for r in rp_all if r["batch/n_replay"] >= r["batch/n_fresh"]] or rp_all
    per_token = update_rate(g)
    extra_tokens = med(r["tokens/trained"] - r["tokens/generated"] for r in rp)
    extra_nongen = med(map(nongen, rp)) - med(map(nongen, g))
    extra_step = med(r["time/step"] for r in rp) - med(r["time/step"] for r in g)
    per_rep = []
    for a, b in zip(runs["grpo"], runs["replay"]):
        b = [r for r in b if r["batch/n_replay"] >= r["batch/n_fresh"]] or b
        pt = update_rate(a)
        xt = med(r["tokens/trained"] - r["tokens/generated"] for r in b)
        per_rep.append((med(map(nongen, b)) - med(map(nongen, a))) / (pt * xt))
    micro = marginal_update_cost([*overrides], micro_reps)
    micro_per_token = micro["extra_update_s"] / max(micro["extra_tokens"], 1)
    out = {
        "overrides": overrides, "steps": steps, "repeats": repeats, "warmup": warmup,
        "grpo": {k: med(r[k] for r in g) for k in ("time/step", "time/generate", "time/grade", "time/update",
                                                     "time/sync", "tokens/generated", "tokens/trained",
                                                     "tokens/forwarded")},
        "replay": {k: med(r[k] for r in rp) for k in ("time/step", "time/generate", "time/grade", "time/update",
                                                        "time/sync", "tokens/generated", "tokens/trained",
                                                        "batch/n_replay")},
        "grpo_breakdown": breakdown(g), "replay_breakdown": breakdown(rp_all),
        "grpo_nongen_s": med(map(nongen, g)), "replay_nongen_s": med(map(nongen, rp)),
        "steady_replay_steps": len(rp), "replay_steps": len(rp_all),
        "update_s_per_token_grpo": per_token, "extra_tokens": extra_tokens,
        "extra_nongen_s": extra_nongen, "extra_step_s": extra_step,
        "ratio": extra_nongen / (per_token * extra_tokens),
        "ratio_per_repeat": per_rep,
        "ratio_full_step": extra_step / (per_token * extra_tokens),
        "micro": micro, "update_s_per_token_marginal": micro_per_token,
        "ratio_marginal": extra_nongen / (micro_per_token * extra_tokens),
        "bookkeeping_share": micro["bookkeeping_s"] / micro["extra_update_s"],
    }
    return out


def report(r: dict) -> str:
    g, p = r["grpo"], r["replay"]
    m = r["micro"]
    return "\n".join([
        f"grpo  : step {g['time/step'] * 1000:.1f} ms, non-generation {r['grpo_nongen_s'] * 1000:.1f} ms, "
        f"update {g['time/update'] * 1000:.1f} ms for {g['tokens/trained']:.0f} tokens",
        f"replay: step {p['time/step'] * 1000:.1f} ms, non-generation {r['replay_nongen_s'] * 1000:.1f} ms, "
        f"update {p['time/update'] * 1000:.1f} ms for {p['tokens/trained']:.0f} tokens "
        f"({p['batch/n_replay']:.0f} replayed rollouts, {r['extra_tokens']:.0f} extra tokens; "
        f"{r['steady_replay_steps']}/{r['replay_steps']} steps with a full replay batch)",
        f"extra time per step (non-generation): {r['extra_nongen_s'] * 1000:.1f} ms; whole step: "
        f"{r['extra_step_s'] * 1000:.1f} ms",
        f"update time per forwarded token (grpo runs, zero-advantage rows are not forwarded): {r['update_s_per_token_grpo'] * 1e6:.1f} us -> "
        f"ratio {r['ratio']:.2f} (per repeat: {', '.join(f'{x:.2f}' for x in r['ratio_per_repeat'])}; "
        f"whole step: {r['ratio_full_step']:.2f})",
        f"marginal update cost of the extra rollouts (in-process, {m['replayed_rollouts']} rollouts, "
        f"{m['extra_tokens']} tokens): {m['extra_update_s'] * 1000:.1f} ms "
        f"({r['update_s_per_token_marginal'] * 1e6:.1f} us/token) -> ratio {r['ratio_marginal']:.2f}; "
        f"its fresh batch: {m['fresh_rollouts']} rollouts, {m.get('fresh_zero_adv', 0)} with advantage 0 (skipped)",
        f"  positions forwarded in the update (padding included): {m['padded_fresh']} fresh only, {m['padded_fresh_plus_replay']} "
        f"with replay ({m['padded_fresh_plus_replay'] / max(m['padded_fresh'], 1):.2f}x for "
        f"{(m['fresh_tokens'] + m['extra_tokens']) / m['fresh_tokens']:.2f}x completion tokens)",
        f"replay bookkeeping per step (evict + compose + add, in-process): {m['bookkeeping_s'] * 1000:.2f} ms "
        f"= {100 * r['bookkeeping_share']:.1f}% of the extra update time",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--micro-reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (default: the peer setting, G=8 x 8, 24 tokens)")
    args = ap.parse_args()
    r = measure(args.steps, args.repeats, args.warmup, PEER + args.overrides, args.micro_reps)
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
