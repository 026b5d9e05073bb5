"""The in-training evaluation: greedy accuracy on held-out problems, per level in the toy lab.

On real data the problems are a fixed subset of a benchmark (`trainer.eval_benchmark`),
graded as the training reward is. The toy eval set (replaygrpo.data.toy.eval_set) holds distinct problems, about 2,400 by
default, so one eval's binomial standard error is about one point overall
(sqrt(0.25 / 2400) = 0.010) and two to three points per level. Problems come grouped by
level, so a generate batch of short answers stops early instead of waiting for the
long worked answers of level 6.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from replaygrpo import distributed
from replaygrpo.data.problem import Problem
from replaygrpo.data.toy import level_of
from replaygrpo.records import SamplingParams


@torch.no_grad()
def heldout_eval(engine: Any, tok: Any, prompts: list[list[int]], problems: list[Problem], grader: Any,
                 max_new_tokens: int, per_level: bool = True) -> dict[str, float]:
    """Greedy accuracy (overall and, with `per_level` on toy problems, `eval/accuracy/L<n>`), mean
    response tokens and the truncated fraction; keys are metrics.jsonl's.

    Under torchrun each rank takes an equal contiguous share (the list padded with repeats,
    dropped afterwards) and the results are gathered.
    """
    n = len(prompts)
    items = list(zip(prompts, [p.gold for p in problems]))
    share = distributed.my_share([items[i % n] for i in range(n + -n % distributed.world_size())])
    out = engine.generate([p for p, _ in share], SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens))
    texts = tok.batch_decode([g[0].token_ids.tolist() for g in out], skip_special_tokens=True)
    mine = list(zip(grader.grade_many(texts, [gold for _, gold in share]),
                    [g[0].token_ids.numel() for g in out], [g[0].finish_reason == "length" for g in out]))
    rows = [x for rank_results in distributed.gather(mine) for x in rank_results][:n]
    by_level: dict[int, list[float]] = defaultdict(list)
    for p, (ok, _, _) in zip(problems, rows):
        if per_level:
            by_level[level_of(p)].append(float(ok))
    correct, tokens, truncated = zip(*rows)
    metrics = {"eval/accuracy": float(np.mean(correct))}
    metrics.update({f"eval/accuracy/L{lvl}": float(np.mean(v)) for lvl, v in sorted(by_level.items())})
    metrics["eval/tokens_mean"] = float(np.mean(tokens))
    metrics["eval/truncated"] = float(np.mean(truncated))
    return metrics
