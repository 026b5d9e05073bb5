"""Training sets: the toy task, MATH train (7,500) and DAPO-Math (14k), from local JSONL or the hub.

Local files follow ../shared/data/train/*/train.jsonl (verl format): the question is the
user message `prompt[1].content`, the gold `reward_model.ground_truth`. Rows with an
empty gold (two in MATH train) are dropped, with a count in the log; so are prompts longer
than `data.max_prompt_tokens` once rendered (`drop_long_prompts`, after tokenising).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from replaygrpo.config import Config
from replaygrpo.data.problem import Problem
from replaygrpo.data.toy import eval_set, make_split
from replaygrpo.jsonl import read_jsonl

log = logging.getLogger(__name__)

HUB_IDS = {
    "math_train": ("DigitalLearningGmbH/MATH-lighteval", "train", "problem", "solution"),
    "dapo_math": ("open-r1/DAPO-Math-17k-Processed", "train", "prompt", "solution"),
}


class DataError(ValueError):
    pass


def _verl_row(row: dict, path: Path, lineno: int) -> tuple[str, str]:
    try:
        question = next(m["content"] for m in row["prompt"] if m["role"] == "user")
        gold = str(row["reward_model"]["ground_truth"])
    except (KeyError, TypeError, StopIteration):
        raise DataError(f"{path}:{lineno}: expected verl fields prompt[].content (role user) and "
                        "reward_model.ground_truth.") from None
    return question, gold


def load_train_set(cfg: Config) -> list[Problem]:
    d = cfg.data
    if d.name == "toy":
        return make_split(list(d.levels), d.num_train, cfg.seed, test=False)
    if d.path is None:
        return _load_hub(d.name)
    path = Path(d.path)
    problems, dropped = [], 0
    for lineno, row in read_jsonl(path, what="data file", error=DataError):
        question, gold = _verl_row(row, path, lineno)
        if not gold.strip():
            dropped += 1
            continue
        problems.append(Problem(id=str(lineno - 1), question=question, gold=gold, source=d.name))
    if dropped:
        log.warning("%s: dropped %d rows with an empty gold answer", path, dropped)
    return problems


def _load_hub(name: str) -> list[Problem]:
    from datasets import load_dataset  # the real path for users with a hub

    from replaygrpo.grading import extract_answer

    repo, split, qkey, gkey = HUB_IDS[name]
    ds = load_dataset(repo, "en" if name == "dapo_math" else None, split=split)
    problems = []
    for i, row in enumerate(ds):
        gold = row[gkey] if name == "dapo_math" else extract_answer(row[gkey])
        if gold:
            problems.append(Problem(id=str(i), question=row[qkey], gold=str(gold), source=name))
    return problems


def toy_test_set(cfg: Config) -> list[Problem]:
    """The toy eval set: min(data.num_test, trainer.eval_size) distinct held-out problems, grouped by level."""
    return eval_set(list(cfg.data.levels), min(cfg.data.num_test, cfg.trainer.eval_size))


def heldout_set(cfg: Config) -> list[Problem]:
    """The in-training eval set: the toy test set; on real data a fixed subset of `trainer.eval_benchmark`
    (trainer.eval_size problems drawn with seed 0, in file order: the same for every run), or none."""
    name = cfg.trainer.eval_benchmark
    if cfg.data.name == "toy":
        if name is not None:  # it would do nothing: the toy lab evaluates its own test set
            raise DataError(f"config key `trainer.eval_benchmark` is {name!r} with data=toy; allowed there: null "
                            "(the toy lab always evaluates its own test set).")
        return toy_test_set(cfg)
    if name is None:
        return []
    from replaygrpo.data.benchmarks import HUB, load_benchmark

    if name not in HUB:
        raise DataError(f"config key `trainer.eval_benchmark` has the bad value {name!r}; allowed: null or one of "
                        f"{', '.join(HUB)}.")
    problems = load_benchmark(name, cfg.eval.data_root)
    keep = np.random.default_rng(0).permutation(len(problems))[:cfg.trainer.eval_size]
    return [problems[i] for i in sorted(keep.tolist())]


def drop_long_prompts(problems: list[Problem], prompt_ids: list[list[int]],
                      max_tokens: int) -> tuple[list[Problem], list[list[int]], int]:
    """Keep the problems whose rendered prompt has at most `max_tokens` tokens (data.max_prompt_tokens).

    Returns (problems kept, their token ids, how many were dropped), order kept. Raises
    DataError naming the key when nothing is left.
    """
    keep = [i for i, ids in enumerate(prompt_ids) if len(ids) <= max_tokens]
    dropped = len(problems) - len(keep)
    if not keep:
        shortest = min(map(len, prompt_ids), default=0)
        raise DataError(f"all {len(problems)} training prompts are longer than data.max_prompt_tokens={max_tokens} "
                        f"tokens (the shortest has {shortest}); raise data.max_prompt_tokens.")
    if dropped:
        log.warning("dropped %d of %d training prompts longer than data.max_prompt_tokens=%d tokens",
                    dropped, len(problems), max_tokens)
    return [problems[i] for i in keep], [prompt_ids[i] for i in keep], dropped
