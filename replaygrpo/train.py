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

from replaygrpo import distributed
from replaygrpo.checkpoint import resume, save_checkpoint
from replaygrpo.config import Config
from replaygrpo.data.prompts import render
from replaygrpo.data.train_sets import load_train_set, toy_test_set
from replaygrpo.grading import GradingPool
from replaygrpo.grpo import group_advantages
from replaygrpo.metrics import MetricsLogger, global_metrics, progress_bar
from replaygrpo.model import FINAL_MODEL, end_of_text_id, load_model, resolve_device, stop_token_ids
from replaygrpo.replay import NaiveReplayBuffer, ReplayBuffer, compose_batch
from replaygrpo.replay.buffer import BaseReplayBuffer
from replaygrpo.rollout.engine import build_engine
from replaygrpo.records import Rollout, SamplingParams
from replaygrpo.sampler import PromptSampler
from replaygrpo.toyeval import toy_eval
from replaygrpo.update import update_step

log = logging.getLogger(__name__)


class RunDirError(RuntimeError):
    pass


class TrainingDiverged(RuntimeError):
    pass


class Interrupted(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_buffer(cfg: Config) -> BaseReplayBuffer | None:
    r = cfg.replay
    if cfg.method.name == "replay":
        return ReplayBuffer(tau_max=r.tau_max, alpha=r.alpha, floor=r.floor, max_reuse=r.max_reuse, unit=r.unit)
    if cfg.method.name == "naive_replay":
        return NaiveReplayBuffer(capacity=r.capacity)
    return None


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


def check_run_dir(run_dir: Path, cfg: Config) -> None:
    if cfg.resume is not None or cfg.overwrite:
        return
    if (run_dir / FINAL_MODEL).exists():
        raise RunDirError(
            f"run directory {run_dir} already holds a finished run ({FINAL_MODEL}/ exists); "
            "choose another hydra.run.dir, or pass overwrite=true to replace it.")
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        raise RunDirError(
            f"run directory {run_dir} holds an unfinished run (metrics.jsonl is not empty); "
            "pass resume=auto to continue it, or overwrite=true to start over.")


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
    distributed.init(resolve_device(cfg.device))  # torchrun: join the group; else nothing
    rank, world = distributed.rank(), distributed.world_size()
    run_dir = Path(distributed.broadcast(str(run_dir)))  # Hydra's default dir is a timestamp: use rank 0's
    run_dir.mkdir(parents=True, exist_ok=True)
    check_run_dir(run_dir, cfg)
    seed_everything(cfg.seed)
    t_cfg, l_cfg, e_cfg = cfg.trainer, cfg.loss, cfg.engine

    # --- the policy, its frozen reference (only if KL is on), the data -------------------
    problems = load_train_set(cfg)  # first: a bad data file should fail before minutes of model loading
    model, tok, base_model = load_policy(cfg)
    eos = end_of_text_id(model, tok)
    distributed.broadcast_weights(model)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if l_cfg.kl_coef > 0 else None
    # torchrun: FSDP2 shards the policy (and the reference) over the ranks; else unchanged.
    device = next(model.parameters()).device
    distributed.shard(model, device)
    if ref_model is not None:
        distributed.shard(ref_model, device)
    test_problems = toy_test_set(cfg) if cfg.data.name == "toy" else []
    def encode(ps: list) -> list[list[int]]:
        return [tok(render(cfg.data.template, p.question), add_special_tokens=False)["input_ids"] for p in ps]

    prompt_ids = encode(problems)
    test_prompts = encode(test_problems)
    sampler = PromptSampler(len(problems), seed=cfg.seed)

    # bf16 compute under autocast over float32 master weights: a bf16 AdamW step at lr 1e-6
    # would round away on most weights.
    autocast_dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else None
    engine = build_engine(e_cfg.name, model=model, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                          batch_size=e_cfg.batch_size, cfg=cfg, stop_token_ids=stop_token_ids(tok, eos),
                          autocast_dtype=autocast_dtype)
    buffer = build_buffer(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t_cfg.lr, weight_decay=t_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / t_cfg.warmup_steps) if t_cfg.warmup_steps else 1.0)
    replay_gen = torch.Generator().manual_seed(cfg.seed + 1 + 1_000_003 * rank)  # each rank's own buffer draws
    grader = GradingPool(num_workers=t_cfg.grader_workers, timeout=cfg.eval.grade_timeout)
    max_age = cfg.replay.tau_max if cfg.method.name == "replay" and cfg.replay.tau_max is not None else 0
    cfg_dict = asdict(cfg)

    # --- resume: everything the next step depends on comes back from the checkpoint -------
    state: dict[str, Any] = {"step": 0, "rollouts_generated": 0, "next_group": 0, "start_accuracy": None,
                             "accuracy": None, "bad_steps": 0, "skipped_steps": 0, "sampler": None}
    metrics_path = run_dir / "metrics.jsonl"
    saved_state = resume(cfg, run_dir, cfg_dict, model=model, optimizer=optimizer, scheduler=scheduler,
                         buffer=buffer, replay_gen=replay_gen, sampler=sampler)
    if saved_state is not None:
        state = saved_state
        engine.sync_weights(model)
    logger = MetricsLogger(metrics_path, cfg, enabled=distributed.is_main())  # rank 0 writes

    def checkpoint() -> Path:
        state["sampler"] = sampler.state_dict()
        return save_checkpoint(run_dir, state["step"], model=model, optimizer=optimizer, scheduler=scheduler,
                               buffer=buffer, state=state, replay_gen=replay_gen, config=cfg_dict,
                               keep=cfg.checkpoint.keep)

    model.train()
    with grader, _StopFlag() as stop, progress_bar(t_cfg.steps, disable=rank > 0) as progress:
        task = progress.add_task("train", total=t_cfg.steps, completed=state["step"])
        if test_problems and state["start_accuracy"] is None:
            state["start_eval"] = toy_eval(engine, tok, test_prompts, test_problems, grader, t_cfg.eval_max_new_tokens)
            state["start_accuracy"] = state["start_eval"]["eval/accuracy"]
            log.info("warm-start toy test accuracy: %.3f", state["start_accuracy"])
        for step in range(state["step"], t_cfg.steps):
            t0 = time.perf_counter()
            # 1. Draw B prompts and sample G completions each with the current policy. Every
            # rank draws the same B (same sampler seed) and generates for its contiguous share:
            # groups stay whole on one rank, so the advantages below are local.
            all_idx = sampler.next(t_cfg.prompts_per_step)
            idx = distributed.my_share(all_idx)
            groups = engine.generate([prompt_ids[i] for i in idx], SamplingParams(
                n=t_cfg.group_size, temperature=e_cfg.temperature, top_p=e_cfg.top_p,
                max_new_tokens=e_cfg.max_new_tokens, seed=(cfg.seed * 1_000_003 + step) * world + rank))
            t_gen = time.perf_counter()

            # 2. Reward: 1 if the extracted answer is equivalent to the gold, else 0.
            completions = [c for g in groups for c in g]
            texts = tok.batch_decode([c.token_ids.tolist() for c in completions], skip_special_tokens=True)
            golds = [problems[i].gold for i in idx for _ in range(t_cfg.group_size)]
            rewards = torch.tensor(grader.grade_many(texts, golds), dtype=torch.float32)
            t_grade = time.perf_counter()

            # 3-4. Group-relative advantages; every completion becomes one rollout.
            first_group = state["next_group"] + rank * len(idx)
            group_ids = torch.arange(len(idx)).repeat_interleave(t_cfg.group_size) + first_group
            state["next_group"] += len(all_idx)
            adv = group_advantages(rewards, group_ids, scale=l_cfg.adv_scale)
            prompt_tensors = [torch.tensor(prompt_ids[i], dtype=torch.int32) for i in idx]  # shared by a group
            fresh = [
                Rollout(prompt_ids=prompt_tensors[k // t_cfg.group_size], completion_ids=c.token_ids,
                        old_logprobs=c.logprobs, reward=float(rewards[k]), advantage=float(adv[k]), birth_step=step, prompt_id=idx[k // t_cfg.group_size],
                        group_id=int(group_ids[k]))
                for k, c in enumerate(completions)]

            # 5-7. Evict what is older than tau_max, then compose: all fresh + R replayed.
            replayed: list[Rollout] = []
            used = fresh
            if buffer is not None:
                buffer.evict(step)
                eligible = len(buffer)  # what the draw of R could choose from (fresh not yet added)
                used, replayed = compose_batch(fresh, buffer, step, cfg.replay.replay_ratio,
                                               cfg.replay.anchor, replay_gen)
            batch = used + replayed
            ages = [0] * len(used) + [step - r.birth_step for r in replayed]
            behaviour = [r.old_logprobs for r in batch] if l_cfg.tis_cap else None

            # 8-9. One clipped-surrogate optimiser step on the composed batch, then push the weights.
            # Under torchrun the batch is this rank's share; update_step makes it one global step.
            engine.sleep()
            result = update_step(
                model, optimizer, batch, ages, num_fresh=len(used), pad_id=tok.pad_token_id,
                temperature=e_cfg.temperature, clip_low=l_cfg.clip_low, clip_high=l_cfg.clip_high,
                agg=l_cfg.agg, old_logprobs=l_cfg.old_logprobs, tis_cap=l_cfg.tis_cap,
                token_budget=t_cfg.micro_batch_tokens, grad_clip=t_cfg.grad_clip,
                ref_model=ref_model, kl_coef=l_cfg.kl_coef, max_age=max_age, engine_logprobs=behaviour,
                autocast_dtype=autocast_dtype, layout=t_cfg.update_layout,
                skip_zero_advantage=t_cfg.skip_zero_advantage)
            scheduler.step()
            t_update = time.perf_counter()
            engine.sync_weights(model)
            t_sync = time.perf_counter()

            # The buffer stores pi_old as the trainer saw it (or the engine's, by config). With
            # anchor=false the displaced fresh rollouts are stored too, with the engine's log-probs.
            if buffer is not None:
                if l_cfg.old_logprobs == "trainer":
                    for r, lp in zip(used, result.fresh_logprobs):
                        r.old_logprobs = lp
                buffer.add(used if cfg.replay.anchor else fresh)

            # Metrics are of the global batch (one gather over the ranks; in one process a list of one).
            batch_metrics, n_generated, skipped, signum = global_metrics({
                "rewards": rewards, "adv": adv, "ages": torch.tensor(ages, dtype=torch.long),
                "lengths": torch.tensor([c.token_ids.numel() for c in completions], dtype=torch.float32),
                "truncated": torch.tensor([c.finish_reason == "length" for c in completions], dtype=torch.float64),
                "by_age": torch.stack([result.clip_count_by_age, result.ratio_sum_by_age, result.tokens_by_age]),
                "n_fresh": len(used), "buffer": len(buffer) if buffer is not None else 0, "loss": result.loss,
                "kl": result.kl, "trained": sum(r.completion_ids.numel() for r in batch), "skipped": result.skipped,
                "rows_skipped": result.rows_skipped, "stop": stop.signum}, max_age)
            state["rollouts_generated"] += n_generated
            state["skipped_steps"] += int(skipped)
            state["bad_steps"] = state["bad_steps"] + 1 if skipped else 0
            if skipped:
                log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                            step + 1, state["bad_steps"])
            metrics: dict[str, Any] = {
                "step": step + 1,
                "rollouts/generated": state["rollouts_generated"],
                **batch_metrics,
                "loss/grad_norm": result.grad_norm,
                "lr": scheduler.get_last_lr()[0],
                "time/generate": t_gen - t0,
                "time/grade": t_grade - t_gen,
                "time/update": t_update - t_grade,
                "time/sync": t_sync - t_update,
                **engine.metrics(),
            }
            if buffer is not None:
                metrics["replay/eligible"] = eligible  # rank 0's buffer under torchrun
            if test_problems and (step + 1 == t_cfg.steps or (t_cfg.eval_every and (step + 1) % t_cfg.eval_every == 0)):
                metrics.update(toy_eval(engine, tok, test_prompts, test_problems, grader, t_cfg.eval_max_new_tokens))
                state["accuracy"] = metrics["eval/accuracy"]
            metrics["loss/skipped_total"] = state["skipped_steps"]
            metrics["time/step"] = time.perf_counter() - t0
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
               "skipped_steps": state["skipped_steps"], "run_dir": str(run_dir),
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
    return summary
