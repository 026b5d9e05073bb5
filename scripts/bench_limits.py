"""The distance to the limit: the update and the sampler against the bare model work they contain.

In one process, on one step's rollouts (the loop's own `make_rollouts`, G = 8 x 8 prompts,
24 new tokens), interleaved (A, B, A, B, ...) and reported as medians:

- update: `update_step` on the step's rollouts (every row trained: skip_zero_advantage off,
  so both sides touch the same tokens) against the limit, one plain forward + backward of
  the same rows (prompt + completion, padded, transformers' own causal-LM cross-entropy on
  the completion tokens) and the same AdamW step. Ratio = update / limit (goal <= 1.15).
- generation: the HF engine's `generate` against plain decoding of the same tokens: the
  same prefill, then one forward per step feeding the tokens the engine sampled, with no
  softmax, sampling, stop test or log-prob bookkeeping. Ratio = engine / plain decoding.

    .venv/bin/python scripts/bench_limits.py [--size toy|31.5M] [--reps 7] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SIZES = {
    "toy": [],  # the shipped toy-strong base
    "31.5M": ["model.name_or_path=toy", "model.hidden_size=512", "model.num_layers=8", "model.num_heads=8",
              "model.num_kv_heads=4", "model.intermediate_size=2048", "model.warmstart_steps=0"],
}
PEER = ["trainer.prompts_per_step=8", "trainer.group_size=8", "engine.max_new_tokens=24",
        "trainer.skip_zero_advantage=false"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(size: str, reps: int) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from replaygrpo.config import register_configs
    from replaygrpo.data.prompts import render
    from replaygrpo.data.train_sets import load_train_set
    from replaygrpo.forward import CompletionBatch, PromptBatch, _positions, prefill
    from replaygrpo.grading import GradingPool
    from replaygrpo.model import end_of_text_id
    from replaygrpo.records import SamplingParams, UpdateBatch
    from replaygrpo.rollout import build_engine
    from replaygrpo.rollout.step import make_rollouts
    from replaygrpo.train import load_policy, seed_everything
    from replaygrpo.update import UpdateOptions, update_step
    from replaygrpo.variants import load_config

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = load_config(compose("config", overrides=[*PEER, *SIZES[size], f"cache_dir={REPO / '.cache'}"]))
    seed_everything(cfg.seed)
    t, e = cfg.trainer, cfg.engine
    model, tok, _ = load_policy(cfg)
    model.train()
    eos = end_of_text_id(model, tok)
    engine = build_engine("hf", model, e, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    problems = load_train_set(cfg)[:t.prompts_per_step]
    prompts = [tok(render(cfg.data.template, p.question), add_special_tokens=False)["input_ids"] for p in problems]
    params = SamplingParams(n=t.group_size, temperature=e.temperature, max_new_tokens=e.max_new_tokens, seed=0)
    grader = GradingPool(num_workers=0)
    made = make_rollouts(engine, grader, tok, prompts, [p.gold for p in problems], list(range(len(prompts))),
                         params, step=0, first_group=0, adv_scale=cfg.loss.adv_scale)
    rollouts = made.rollouts
    opts = UpdateOptions.from_config(cfg, tok.pad_token_id, autocast_dtype=None)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr)

    # --- the update and its limit -----------------------------------------------------------
    cb = CompletionBatch.build([r.prompt_ids for r in rollouts], [r.completion_ids for r in rollouts],
                               tok.pad_token_id)
    p = cb.prompts
    full_ids = torch.cat([p.ids[cb.row_prompt], cb.ids], dim=1)
    full_mask = torch.cat([p.mask[cb.row_prompt], cb.mask.long()], dim=1)
    labels = torch.where(torch.cat([torch.zeros_like(p.mask[cb.row_prompt], dtype=torch.bool), cb.mask], dim=1),
                         full_ids, -100)

    def update() -> None:
        update_step(model, opt, UpdateBatch(rollouts, len(rollouts)), opts)

    def plain_step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=full_ids, attention_mask=full_mask, position_ids=_positions(full_mask), labels=labels)
        out.loss.backward()
        opt.step()

    # --- generation and plain decoding of the same tokens --------------------------------------
    groups = engine.generate(prompts, params)
    steps = max(c.token_ids.numel() for g in groups for c in g)
    forced = torch.full((len(prompts) * t.group_size, steps), tok.pad_token_id, dtype=torch.long)
    for k, c in enumerate(c for g in groups for c in g):
        forced[k, :c.token_ids.numel()] = c.token_ids

    def generate() -> None:
        engine.generate(prompts, params)

    @torch.no_grad()
    def plain_decode() -> None:
        model.eval()
        batch = PromptBatch.build(prompts, tok.pad_token_id)
        rows = torch.arange(len(prompts)).repeat_interleave(t.group_size)
        _, cache = prefill(model, batch, rows)
        mask = torch.cat([batch.mask[rows], batch.mask.new_ones(len(rows), steps)], dim=1)
        position = batch.lengths[rows]
        width = batch.ids.shape[1]
        for s in range(steps - 1):
            model(input_ids=forced[:, s:s + 1], attention_mask=mask[:, :width + s + 1], position_ids=position[:, None],
                  past_key_values=cache, use_cache=True)
            position = position + 1
        model.train()

    times: dict[str, list[float]] = {"update": [], "plain_step": [], "generate": [], "plain_decode": []}
    for fn in (update, plain_step, generate, plain_decode):  # warm-up
        fn()
    for _ in range(reps):
        for name, fn in (("update", update), ("plain_step", plain_step), ("generate", generate),
                         ("plain_decode", plain_decode)):
            times[name].append(timed(fn))
    grader.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "size": size, "params": sum(x.numel() for x in model.parameters()), "reps": reps,
        "rows": len(rollouts), "completion_tokens": int(cb.mask.sum()), "padded_positions": int(full_ids.numel()),
        "shared_prefix_positions": cb.positions(), "decode_steps": steps, "times": times, "median": med,
        "update_ratio": med["update"] / med["plain_step"],
        "update_ratio_per_rep": [a / b for a, b in zip(times["update"], times["plain_step"])],
        "generate_ratio": med["generate"] / med["plain_decode"],
        "generate_ratio_per_rep": [a / b for a, b in zip(times["generate"], times["plain_decode"])],
    }


def report(r: dict) -> str:
    m = r["median"]
    spread = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"  # noqa: E731
    return (f"{r['size']} ({r['params'] / 1e6:.2f}M params), {r['rows']} rollouts, {r['completion_tokens']} completion "
            f"tokens, medians of {r['reps']}:\n"
            f"  update {m['update'] * 1e3:.1f} ms vs plain forward+backward+AdamW {m['plain_step'] * 1e3:.1f} ms "
            f"-> {r['update_ratio']:.2f}x (per rep {spread(r['update_ratio_per_rep'])}); positions forwarded: "
            f"shared prefix {r['shared_prefix_positions']} vs padded {r['padded_positions']}\n"
            f"  generate {m['generate'] * 1e3:.1f} ms vs plain decoding {m['plain_decode'] * 1e3:.1f} ms "
            f"({r['decode_steps']} steps) -> {r['generate_ratio']:.2f}x (per rep {spread(r['generate_ratio_per_rep'])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="toy")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    r = measure(args.size, args.reps)
    print(report(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
