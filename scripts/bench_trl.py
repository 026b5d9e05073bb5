"""The peer: TRL's GRPOTrainer on the toy lab, timed per optimiser step.

Same model directory, prompts (in replaygrpo's own sampling order), group size,
max new tokens, temperature, learning rate and grader as `replaygrpo train
method=grpo`; one optimiser step per generation batch, no KL (beta=0), token-mean
loss (TRL's "dapo": the sum over tokens divided by the tokens in the global batch),
float32, no gradient checkpointing (TRL defaults to bf16 and checkpointing; replaygrpo
uses neither), one policy iteration per generation. Writes one JSON object with the
per-step wall times (TrainerCallback on_step_begin -> on_step_end), a per-step
breakdown (generate / reward / scoring / loss forward / backward / optimiser) and
the completion lengths.

    .venv/bin/python scripts/bench_trl.py --model-dir .cache/warmstart/<key> --steps 30 --out trl.json

Needs `trl>=1.16,<2` (the `bench` extra).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="a save_pretrained dir holding the model and its tokenizer")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (B)")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from replaygrpo.config import Config
    from replaygrpo.data.prompts import render
    from replaygrpo.data.train_sets import load_train_set
    from replaygrpo.grading import grade
    from replaygrpo.sampler import PromptSampler

    # The prompts replaygrpo would draw, in its order: the dataset is laid out in that
    # order and TRL's sampler is told not to shuffle, so step s sees the same B prompts.
    cfg = Config()
    cfg.seed = args.seed
    problems = load_train_set(cfg)
    sampler = PromptSampler(len(problems), seed=cfg.seed)
    order = [i for _ in range(args.steps) for i in sampler.next(args.prompts)]
    ds = Dataset.from_dict({"prompt": [render(cfg.data.template, problems[i].question) for i in order],
                            "gold": [problems[i].gold for i in order]})

    def correct(completions: list[str], gold: list[str], **_: object) -> list[float]:
        return [float(grade(c, g)) for c, g in zip(completions, gold)]

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    n = args.prompts * args.group
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    gcfg = GRPOConfig(
        output_dir=out_dir, use_cpu=True, report_to="none", seed=args.seed,
        max_steps=args.steps, logging_steps=1, save_strategy="no", disable_tqdm=True,
        per_device_train_batch_size=n, gradient_accumulation_steps=1, num_generations=args.group,
        num_iterations=1, shuffle_dataset=False,
        max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=1.0, top_k=0,
        beta=0.0, loss_type="dapo", epsilon=0.2, scale_rewards="group",
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, optim="adamw_torch",
        bf16=False, gradient_checkpointing=False, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=correct, args=gcfg, train_dataset=ds, processing_class=tok)

    # Per-step accumulators: wrap the trainer's own phases on the instance.
    acc: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._prepare_inputs = timed("prepare", trainer._prepare_inputs)
    trainer.compute_loss = timed("loss_forward", trainer.compute_loss)
    trainer.training_step = timed("training_step", trainer.training_step)

    steps: list[dict[str, float]] = []
    lengths: list[float] = []

    class Timer(TrainerCallback):
        t0 = 0.0

        def on_step_begin(self, *a, **k):
            acc.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            dt = time.perf_counter() - self.t0
            prepare = acc.get("prepare", 0.0)
            train_step = acc.get("training_step", 0.0)
            steps.append({
                "step": dt,
                "generate": acc.get("generate", 0.0),
                "reward": acc.get("reward", 0.0),
                "score_other": prepare - acc.get("generate", 0.0) - acc.get("reward", 0.0),
                "loss_forward": acc.get("loss_forward", 0.0),
                "backward": train_step - prepare - acc.get("loss_forward", 0.0),
                "optimizer": dt - train_step,
            })

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    trainer.remove_callback(PrinterCallback)  # logs go to on_log above, not stdout
    trainer.add_callback(Timer())
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    result = {
        "framework": "trl", "trl_version": trl.__version__, "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()), "steps": steps,
        "mean_length": lengths, "tokens_generated": [m * n for m in lengths], "train_wall_s": wall,
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
