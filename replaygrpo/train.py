"""The training loop: GRPO with rollout-level, age-evicted, advantage-prioritised replay.

Read it beside the paper (arXiv 2606.04560) and ../shared/DESIGN.md. Per step t:
generate G completions for B prompts, grade, group-normalise the advantages, compose
the update batch (every fresh rollout plus R replayed ones born before t and no older
than tau_max), take one clipped-surrogate step, store the fresh rollouts with non-zero
advantage, evict what ages out. `method=grpo` is the same loop with no buffer.

Departures from the paper, all deliberate: (1) by default pi_old for a fresh rollout is
the trainer's own log-prob from the update's forward (identical weights, no extra pass),
not the engine's; (2) eviction runs before sampling at every step, so the age bound
holds even if a step is skipped.

Under torchrun (docs/distributed.md) each rank generates for its contiguous share of the
step's prompts and keeps its own buffer; the update is one FSDP2 step on the global
batch, and rank 0 logs global figures and writes checkpoints and the final model.
"""
from __future__ import annotations

import copy
import json
import logging
import random
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from replaygrpo import distributed, memplan
from replaygrpo.checkpoint import resume, save_checkpoint
from replaygrpo.config import Config
from replaygrpo.data.prompts import render
from replaygrpo.data.train_sets import drop_long_prompts, heldout_set, load_train_set
from replaygrpo.grading import GradingPool
from replaygrpo.methods import with_pi_old
from replaygrpo.metrics import MetricsLogger, global_metrics, local_numbers, progress_bar, step_metrics
from replaygrpo.model import FINAL_MODEL, end_of_text_id, load_model, resolve_device, stop_token_ids
from replaygrpo.records import SamplingParams, UpdateBatch
from replaygrpo.rollout import build_engine
from replaygrpo.rollout.step import make_rollouts
from replaygrpo.offload import free_gradients_after_step, offload_optimizer
from replaygrpo.rundir import claim_run_dir, release_run_dir
from replaygrpo.sampler import PromptSampler
from replaygrpo.heldout import heldout_eval
from replaygrpo.update import UpdateOptions, update
from replaygrpo.variants import resolve as resolve_variants

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


class Interrupted(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_policy(cfg: Config):
    """The model being trained, its tokenizer, and the record of a toy base (name, SHA-256) or None.

    A shipped toy base (toy-weak, toy-strong) is checked against its manifest; `toy` warm-starts (cached)."""
    from replaygrpo.toymodel import resolve_toy

    path, base = cfg.model.name_or_path, None
    if path == "toy" and distributed.is_main():  # once; the other ranks then find it cached
        resolve_toy(cfg)
    distributed.barrier()
    toy = resolve_toy(cfg)
    if toy is not None:
        path, base = str(toy[0]), toy[1]
    model, tok = load_model(path, "float32", cfg.device, cfg.model.tokenizer,  # float32 master weights
                            cfg.model.attn_implementation)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tok, base


class _StopFlag:
    """Turns SIGTERM/SIGINT into 'checkpoint at the end of this step, then exit'."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train per `cfg`, writing metrics.jsonl, checkpoints and the final model into `run_dir`."""
    variants = resolve_variants(cfg)  # a bad method/engine/aggregation name fails before any loading
    distributed.init(resolve_device(cfg.device))  # torchrun: join the group; else nothing
    rank, world = distributed.rank(), distributed.world_size()
    run_dir = Path(distributed.broadcast(str(run_dir)))  # Hydra's default dir is a timestamp: use rank 0's
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(run_dir, cfg)  # one process per run dir (rundir.py), then what the dir holds
    memplan.check(cfg, resolve_device(cfg.device).type, world)  # log the budget; on CUDA refuse what cannot fit
    seed_everything(cfg.seed)
    t_cfg, l_cfg, e_cfg = cfg.trainer, cfg.loss, cfg.engine

    # --- the policy, its frozen reference (only if KL is on), the data -------------------
    # Data first: a bad file or name should fail before minutes of model loading.
    test_problems = heldout_set(cfg)  # the toy test set, a benchmark subset, or none
    problems = load_train_set(cfg)
    model, tok, base_model = load_policy(cfg)
    eos = end_of_text_id(model, tok)
    distributed.broadcast_weights(model)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if l_cfg.kl_coef > 0 else None
    # torchrun: FSDP2 shards the policy (and the reference) over the ranks; else unchanged.
    device = next(model.parameters()).device
    distributed.shard(model, device, torch.bfloat16 if cfg.fsdp.mixed_precision else None)  # fsdp.mixed_precision
    if ref_model is not None:
        distributed.shard(ref_model, device)
    def encode(ps: list) -> list[list[int]]:
        return [tok(render(cfg.data.template, p.question), add_special_tokens=False)["input_ids"] for p in ps]

    # Training prompts over data.max_prompt_tokens are dropped (the memory plan budgets for
    # no longer); the held-out prompts are never dropped, so every run scores the same set.
    problems, prompt_ids, prompts_dropped = drop_long_prompts(problems, encode(problems), cfg.data.max_prompt_tokens)
    test_prompts = encode(test_problems)
    sampler = PromptSampler(len(problems), seed=cfg.seed)

    # bf16 compute under autocast over float32 master weights: a bf16 AdamW step at lr 1e-6
    # would round away on most weights.
    autocast_dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else None
    engine = build_engine(e_cfg.name, model, e_cfg, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                          stop_token_ids=stop_token_ids(tok, eos), autocast_dtype=autocast_dtype,
                          seed=cfg.seed, dtype=cfg.model.dtype)
    replay = variants.method.build(cfg.replay)  # method=grpo: keeps nothing, composes fresh only
    update_opts = UpdateOptions.from_config(cfg, tok.pad_token_id, autocast_dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t_cfg.lr, weight_decay=t_cfg.weight_decay)
    free_gradients_after_step(optimizer)  # not needed until the next update; the engine needs the room
    if cfg.fsdp.offload_optimizer:  # AdamW's moments in host memory between steps (offload.py)
        offload_optimizer(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / t_cfg.warmup_steps) if t_cfg.warmup_steps else 1.0)
    replay_gen = torch.Generator().manual_seed(cfg.seed + 1 + 1_000_003 * rank)  # each rank's own buffer draws
    grader = GradingPool(num_workers=t_cfg.grader_workers, timeout=cfg.eval.grade_timeout)
    cfg_dict = asdict(cfg)

    # --- resume: everything the next step depends on comes back from the checkpoint -------
    state: dict[str, Any] = {"step": 0, "rollouts_generated": 0, "next_group": 0, "start_accuracy": None,
                             "accuracy": None, "bad_steps": 0, "skipped_steps": 0, "sampler": None}
    metrics_path = run_dir / "metrics.jsonl"
    saved_state = resume(cfg, run_dir, cfg_dict, model=model, optimizer=optimizer, scheduler=scheduler,
                         buffer=replay.buffer, replay_gen=replay_gen, sampler=sampler)
    if saved_state is not None:
        state = saved_state
        engine.sync_weights(model)
    logger = MetricsLogger(metrics_path, cfg, enabled=distributed.is_main())  # rank 0 writes

    def checkpoint() -> Path:
        state["sampler"] = sampler.state_dict()
        return save_checkpoint(run_dir, state["step"], model=model, optimizer=optimizer, scheduler=scheduler,
                               buffer=replay.buffer, state=state, replay_gen=replay_gen, config=cfg_dict,
                               keep=cfg.checkpoint.keep)

    def evaluate() -> dict[str, float]:
        return heldout_eval(engine, tok, test_prompts, test_problems, grader, t_cfg.eval_max_new_tokens,
                            per_level=cfg.data.name == "toy")

    model.train()
    with grader, _StopFlag() as stop, progress_bar(t_cfg.steps, disable=rank > 0) as progress:
        task = progress.add_task("train", total=t_cfg.steps, completed=state["step"])
        if test_problems and state["start_accuracy"] is None:
            state["start_eval"] = evaluate()
            state["start_accuracy"] = state["start_eval"]["eval/accuracy"]
            log.info("warm-start held-out accuracy: %.3f", state["start_accuracy"])
        for step in range(state["step"], t_cfg.steps):
            t0 = time.perf_counter()
            # 1-4. Draw B prompts; generate G completions each, grade, group-normalise, one rollout
            # per completion. Every rank draws the same B (same sampler seed) and generates for its
            # contiguous share: groups stay whole on one rank, so the advantages are local.
            all_idx = sampler.next(t_cfg.prompts_per_step)
            idx = distributed.my_share(all_idx)
            made = make_rollouts(
                engine, grader, tok, [prompt_ids[i] for i in idx], [problems[i].gold for i in idx], idx,
                SamplingParams(n=t_cfg.group_size, temperature=e_cfg.temperature, top_p=e_cfg.top_p,
                               max_new_tokens=e_cfg.max_new_tokens, seed=(cfg.seed * 1_000_003 + step) * world + rank),
                step=step, first_group=state["next_group"] + rank * len(idx), adv_scale=l_cfg.adv_scale)
            state["next_group"] += len(all_idx)
            t_update0 = time.perf_counter()

            # 5-7. Evict what is older than tau_max, then compose: all fresh + R replayed.
            replay.evict(step)
            eligible = len(replay)  # what the draw of R could choose from (fresh not yet added)
            used, replayed = replay.compose(made.rollouts, step, replay_gen)
            batch = UpdateBatch(used + replayed, num_fresh=len(used))

            # 8-9. Clipped-surrogate optimiser step(s) on the composed batch (trainer.mini_batches),
            # then push the weights. Under torchrun the batch is this rank's share; each step is global.
            engine.sleep()
            result = update(model, optimizer, batch, update_opts, ref_model,
                            order_seed=(cfg.seed * 1_000_003 + step) * world + rank)
            scheduler.step()
            t_update = time.perf_counter()
            engine.sync_weights(model)
            t_sync = time.perf_counter()

            # The buffer stores each fresh rollout with the pi_old it was trained with (the
            # trainer's, or the engine's, by config); one displaced by anchor=false keeps the engine's.
            # With TIS on, the engine's log-probs are kept beside the trainer's, so a replayed
            # rollout is weighted as a fresh one is.
            replay.store(with_pi_old(made.rollouts, used, result.fresh_logprobs, keep_behaviour=bool(l_cfg.tis_cap)))

            # Metrics are of the global batch (one gather over the ranks; in one process a list of one).
            batch_metrics, n_generated, skipped, signum = global_metrics(
                local_numbers(made, batch, result, step, len(replay), stop.signum), replay.age_bound)
            state["rollouts_generated"] += n_generated
            state["skipped_steps"] += int(skipped)
            state["bad_steps"] = state["bad_steps"] + 1 if skipped else 0
            if skipped:
                log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                            step + 1, state["bad_steps"])
            t_train = time.perf_counter()
            evaluation: dict[str, float] = {}
            if test_problems and (step + 1 == t_cfg.steps or (t_cfg.eval_every and (step + 1) % t_cfg.eval_every == 0)):
                evaluation = evaluate()
                state["accuracy"] = evaluation["eval/accuracy"]
            # time/step is the training step alone (the compute axis); the toy eval is time/eval.
            times = {"generate": made.generate_s, "grade": made.grade_s, "update": t_update - t_update0,
                     "sync": t_sync - t_update, "step": t_train - t0, "eval": time.perf_counter() - t_train}
            metrics = step_metrics(step, batch_metrics, result, rollouts_generated=state["rollouts_generated"],
                                   skipped_total=state["skipped_steps"], lr=scheduler.get_last_lr()[0], times=times,
                                   engine=engine.metrics(), evaluation=evaluation)
            metrics["replay/eligible"] = eligible  # rank 0's buffer under torchrun
            logger.log(metrics)
            state["step"] = step + 1
            acc = state["accuracy"]
            progress.update(task, advance=1, description=(
                f"reward {metrics['reward/mean']:.2f}" + (f" | toy acc {acc:.3f}" if acc is not None else "")))

            if state["bad_steps"] >= t_cfg.max_bad_steps:
                path = checkpoint()
                raise TrainingDiverged(
                    f"{state['bad_steps']} steps in a row had a non-finite loss or gradient (step {step + 1}); "
                    f"the last good state is checkpointed at {path}. Lower trainer.lr or check the data.")
            if signum is not None:
                path = checkpoint()
                logger.close()
                raise Interrupted(f"stopped by signal {signum} after step {step + 1}; checkpoint {path}; "
                                  f"continue with resume=auto hydra.run.dir={run_dir}")
            if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0 and step + 1 < t_cfg.steps:
                checkpoint()
    final = run_dir / FINAL_MODEL
    weights = distributed.full_model_state(model)  # torchrun: gathered to rank 0
    logger.close()
    summary = {"start_accuracy": state["start_accuracy"], "final_accuracy": state["accuracy"],
               "steps": t_cfg.steps, "rollouts_generated": state["rollouts_generated"],
               "skipped_steps": state["skipped_steps"], "prompts_dropped": prompts_dropped,
               "run_dir": str(run_dir),
               "start_eval": state.get("start_eval"), "base_model": base_model}
    if distributed.is_main():
        model.save_pretrained(final, state_dict=weights)
        tok.save_pretrained(final)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    # The final model exists before any rank returns, and nothing is in flight when the
    # engine closes (a vLLM engine's close ends the process group too).
    distributed.quiesce()
    engine.close()
    distributed.close()
    release_run_dir(run_dir)
    return summary
