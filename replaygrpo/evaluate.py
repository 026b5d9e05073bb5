"""Benchmark evaluation: n samples per problem (per benchmark), graded in killable workers, resumable.

Departures from the Qwen2.5-Math harness it follows (same files, prompt and \\boxed{}
answer): accuracy is avg@n over n samples (n = 1 and temperature 0 is the harness's
greedy setting; `eval.k_per_benchmark` gives small benchmarks more samples), pass@k for
any k <= n uses the unbiased estimator of Chen et al. (2021) on the same n samples, a
response is cut at the first ChatML/end-of-text stop token (a base model under a ChatML
prompt often goes on to invent the next turn, and its boxes must not count), and grading
runs in worker processes with a hard per-answer time limit instead of in-process sympy.
The grader's tolerance, percent and no-box rules follow `eval.grader` (a profile) and
are recorded in results.json.

Files in the output dir:
- `<benchmark>.jsonl`: one line per (problem, sample), appended batch by batch as graded.
- `eval_config.json`: the settings, written before generating; a resume must match them.
- `results.json`: the summary (schema `replaygrpo.results/1`, see docs/evaluation.md).

A rerun into the same dir generates only the missing (problem, sample) pairs; a line cut
off by a kill is dropped and the file rewritten cleanly first.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from replaygrpo.config import Config, EngineConfig
from replaygrpo.data.benchmarks import TOY, load_benchmark
from replaygrpo.data.problem import Problem
from replaygrpo.data.prompts import render
from replaygrpo.grading import GraderSettings, GradingPool, extract_answer, grader_settings
from replaygrpo.model import FINAL_MODEL, stop_token_ids
from replaygrpo.toymodel import BASES, verify_base

log = logging.getLogger(__name__)

SCHEMA = "replaygrpo.results/1"
RESULTS = "results.json"
SETTINGS = "eval_config.json"
RESUME_KEYS = ("model", "tokenizer", "dtype", "seed", "k", "k_per_benchmark", "temperature", "top_p",
               "max_new_tokens", "template", "grader_settings")
"""Settings that change what a sample (or its grade) means; a resume refuses if any differs."""
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


class EvalError(RuntimeError):
    """An eval cannot start or resume; the message names the file, key or setting."""


# ---------------------------------------------------------------- metrics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(records: Iterable[dict[str, Any]], k: int, pass_k: Iterable[int] = ()) -> dict[str, Any]:
    """n problems, k samples each, accuracy (avg@k: mean over problems of the fraction
    correct, the unbiased pass@1), pass@k, `pass_at` {j: pass@j} for each j in `pass_k`
    with j <= k, and mean tokens. A problem with fewer samples than asked (an unfinished
    eval) counts pass@m for its m samples where m is smaller.
    """
    by_problem: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        by_problem.setdefault(str(r["problem_id"]), {})[int(r["sample"])] = r  # last copy wins
    wanted = sorted({j for j in pass_k if j <= k})
    if not by_problem:
        return {"n": 0, "k": k, "accuracy": 0.0, "pass_at_k": 0.0, "pass_at": {str(j): 0.0 for j in wanted},
                "mean_tokens": 0.0}
    acc, tokens = [], []
    pak: dict[int, list[float]] = {j: [] for j in {k, *wanted}}
    for samples in by_problem.values():
        n, c = len(samples), sum(bool(r["correct"]) for r in samples.values())
        acc.append(c / n)
        for j in pak:
            pak[j].append(pass_at_k(n, c, min(j, n)))
        tokens.extend(int(r["tokens"]) for r in samples.values())
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"n": len(by_problem), "k": k, "accuracy": mean(acc), "pass_at_k": mean(pak[k]),
            "pass_at": {str(j): mean(pak[j]) for j in wanted}, "mean_tokens": mean(tokens)}


def samples_per_problem(settings: dict[str, Any], name: str) -> int:
    """The sample count of benchmark `name` under eval settings (k, k_per_benchmark)."""
    return int((settings.get("k_per_benchmark") or {}).get(name, settings["k"]))


def build_results(settings: dict[str, Any], summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The results.json object; `average` is the unweighted mean over benchmarks."""
    vals = list(summaries.values())
    avg = {key: (sum(v[key] for v in vals) / len(vals) if vals else 0.0) for key in ("accuracy", "mean_tokens")}
    out = {"schema": SCHEMA, "model": settings["model"], "k": settings["k"], "config": settings,
           "benchmarks": summaries, "average": avg}
    if "grader_settings" in settings:
        out["grader"] = {"profile": settings.get("grader", "default"), **settings["grader_settings"]}
    return out


def resolve_grader(eval_cfg: Any) -> GraderSettings:
    """The grader settings an eval config names (profile plus overrides); errors name the key."""
    try:
        return grader_settings(eval_cfg.grader, rel_tol=eval_cfg.grader_rel_tol, percent=eval_cfg.grader_percent,
                               fallback=eval_cfg.grader_fallback)
    except ValueError as err:
        raise EvalError(f"eval.grader settings: {err}") from None


# ---------------------------------------------------------------- files
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


def _jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def load_records(path: Path) -> list[dict[str, Any]]:
    """Records of a per-sample JSONL. A cut-off last line (killed mid-write) is dropped and
    the file rewritten without it; a bad line anywhere else is an error naming the line."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records, repair = [], lines[-1] != ""  # a complete file ends with a newline
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[i + 1:]):
                raise EvalError(f"{path}:{i + 1}: malformed JSON line (only the last line may be cut off).") from None
            log.warning("%s: dropping the cut-off last line %d", path, i + 1)
            repair = True
    if repair:
        _atomic_write(path, _jsonl(records))
    return records


def _ensure_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise EvalError(f"eval output dir {str(out)!r} is not writable: {err.strerror or err}.") from err


def _read_settings(out: Path) -> dict[str, Any] | None:
    for name, key in ((SETTINGS, None), (RESULTS, "config")):
        path = out / name
        if path.exists():
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise EvalError(f"{path} is not valid JSON ({err.msg}); delete it or use another eval.out.") from None
            return obj[key] if key else obj
    return None


def check_resumable(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix samples made under different settings into one output dir."""
    old = _read_settings(out)
    if old is None:
        return
    defaults = {"k_per_benchmark": {}}  # dirs written before the key existed
    diff = [k for k in RESUME_KEYS if old.get(k, defaults.get(k)) != settings.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
        hint = " (`replaygrpo regrade --grader` re-grades it)" if diff == ["grader_settings"] else ""
        raise EvalError(f"{out} holds an eval made with different settings ({detail}){hint}; "
                        "use another eval.out or delete that dir.")


# ---------------------------------------------------------------- generation
def _model_id(name_or_path: str) -> str:
    # Absolute for local dirs, so a resume from another working dir still matches.
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if p.exists() else name_or_path


def eval_settings(cfg: Config) -> dict[str, Any]:
    """The eval config plus the model keys and the resolved grader settings: what results.json records as `config`."""
    return {**dataclasses.asdict(cfg.eval), "model": _model_id(cfg.model.name_or_path),
            "model_name": cfg.model.name, "tokenizer": cfg.model.tokenizer, "dtype": cfg.model.dtype,
            "seed": cfg.seed, "grader_settings": resolve_grader(cfg.eval).as_dict()}


def _out_dir(cfg: Config) -> Path:
    if cfg.eval.out:
        return Path(cfg.eval.out)
    run = Path(cfg.model.name_or_path)
    if (run / FINAL_MODEL).is_dir():
        return run / "eval"  # a training run: its eval sits next to its metrics
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir) / "eval"
    except (ImportError, ValueError):
        raise EvalError("no output dir: set eval.out=<dir> (or evaluate a training run dir).") from None


def _truncate(ids: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[:i + 1], True
    return ids, False


def _grade_rows(pool: GradingPool, rows: list[dict[str, Any]]) -> list[bool]:
    return pool.grade_many([r["response"] for r in rows], [r["gold"] for r in rows],
                           [r.get("tolerance") for r in rows])


def _grade_append(pool: GradingPool, rows: list[dict[str, Any]], f: IO[str], progress: Any, task: Any) -> None:
    oks = _grade_rows(pool, rows)
    for r, ok in zip(rows, oks):
        r["correct"] = bool(ok)
    f.write(_jsonl(rows))
    f.flush()  # a kill loses at most the batch being written
    progress.advance(task, len(rows))


def _generate_benchmark(name: str, todo: list[tuple[Problem, int]], path: Path, cfg: Config, engine: Any,
                        tok: Any, pool: GradingPool, progress: Any) -> None:
    """Generate, grade and append every (problem, sample) in `todo`, batch by batch.

    Each pair is its own n=1 request (a prompt repeated for its missing samples), so a
    resume can fill single holes; for the HF engine this costs the same as n=k.
    Grading of batch i runs in a thread while batch i+1 generates.
    """
    from replaygrpo.rollout import SamplingParams

    template = "toy" if name == TOY else cfg.eval.template
    prompts = {p.id: render(template, p.question) for p, _ in todo}
    prompt_ids = {pid: tok(text, add_special_tokens=False)["input_ids"] for pid, text in prompts.items()}
    stop_ids = {i for i in tok.convert_tokens_to_ids(list(STOP_TOKENS)) if i is not None and i != tok.unk_token_id}
    task = progress.add_task(name, total=len(todo))
    bs = cfg.eval.batch_size
    with ThreadPoolExecutor(1) as grader, path.open("a", encoding="utf-8") as f:
        pending: Future[None] | None = None
        for b, start in enumerate(range(0, len(todo), bs)):
            batch = todo[start:start + bs]
            params = SamplingParams(n=1, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                                    max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.seed * 100_003 + b)
            outs = engine.generate([prompt_ids[p.id] for p, _ in batch], params)
            rows, g = [], pool.settings
            for (p, s), (c,) in zip(batch, outs):
                ids, stopped = _truncate(c.token_ids.tolist(), stop_ids)
                response = tok.decode(ids, skip_special_tokens=True)
                rows.append({"problem_id": p.id, "sample": s, "prompt": prompts[p.id], "response": response,
                             "extracted": extract_answer(response, g.fallback, g.join_boxes), "gold": p.gold,
                             "tolerance": p.tolerance, "correct": None, "tokens": len(ids),
                             "finish_reason": "stop" if stopped else c.finish_reason})
            if pending is not None:
                pending.result()
            pending = grader.submit(_grade_append, pool, rows, f, progress, task)
        if pending is not None:
            pending.result()


def run_eval(cfg: Config) -> dict[str, Any]:
    """Evaluate `cfg.model.name_or_path` on `cfg.eval.benchmarks`; returns the results.json object.

    Writes `<out>/<benchmark>.jsonl` (appended as graded) and `<out>/results.json`, where
    out is `cfg.eval.out`, else `<run>/eval` for a training run dir, else the Hydra run
    dir's `eval/`. Resumes into an existing out dir made with the same settings.
    """
    if cfg.model.name_or_path == "toy":
        raise EvalError("model.name_or_path=toy names the toy lab's warm-start recipe (built per machine), not a "
                        f"saved model: evaluate a shipped toy base ({', '.join(BASES)}), a training run dir, a "
                        "model dir saved with save_pretrained, or a hub id.")
    base = None
    if cfg.model.name_or_path in BASES:  # a shipped toy base: checked against its SHA-256, then loaded from its dir
        path, digest = verify_base(cfg.model.name_or_path)
        base = {"name": cfg.model.name_or_path, "sha256": digest}
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=str(path)))
    out = _out_dir(cfg)
    _ensure_writable(out)
    settings = eval_settings(cfg)
    check_resumable(out, settings)
    _atomic_write(out / SETTINGS, json.dumps(settings, indent=2) + "\n")

    problems = {name: load_benchmark(name, cfg.eval.data_root, cfg.eval.limit) for name in cfg.eval.benchmarks}
    ks = {name: samples_per_problem(settings, name) for name in problems}
    todo = {}
    for name, probs in problems.items():
        done = {(str(r["problem_id"]), int(r["sample"])) for r in load_records(out / f"{name}.jsonl")}
        todo[name] = [(p, s) for p in probs for s in range(ks[name]) if (p.id, s) not in done]
    if any(todo.values()):
        _generate_all(cfg, out, todo)

    summaries = {}
    for name, probs in problems.items():
        keep, k = {p.id for p in probs}, ks[name]  # a rerun with a smaller limit reports only its problems
        recs = [r for r in load_records(out / f"{name}.jsonl") if str(r["problem_id"]) in keep and r["sample"] < k]
        summaries[name] = summarize(recs, k, cfg.eval.pass_k)
        log.info("%s: accuracy %.4f pass@%d %.4f (%d problems)", name, summaries[name]["accuracy"], k,
                 summaries[name]["pass_at_k"], summaries[name]["n"])
    results = build_results(settings, summaries)
    if base is not None:
        results["base_model"] = base
    _atomic_write(out / RESULTS, json.dumps(results, indent=2) + "\n")
    return results


def eval_engine_settings(cfg: Config) -> EngineConfig:
    """The eval engine's settings: the training engine's, in one process (no tensor parallelism
    whatever training used), without sleep mode (nothing else needs the memory, and vLLM allows
    one sleep-mode engine per process) and with the eval's own memory fraction."""
    return dataclasses.replace(cfg.engine, tensor_parallel_size=1, sleep_mode=False,
                               gpu_memory_utilization=cfg.eval.gpu_memory_utilization)


def _generate_all(cfg: Config, out: Path, todo: dict[str, list[tuple[Problem, int]]]) -> None:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from replaygrpo.model import end_of_text_id, load_model
    from replaygrpo.rollout.engine import build_engine

    # Workers start first so their imports overlap with loading the model.
    with GradingPool(cfg.eval.grader_workers, cfg.eval.grade_timeout, resolve_grader(cfg.eval)) as pool:
        model, tok = load_model(cfg.model.name_or_path, cfg.model.dtype, cfg.device, cfg.model.tokenizer,
                                cfg.model.attn_implementation)
        eos = end_of_text_id(model, tok)
        kw: dict[str, Any] = {}
        if cfg.eval.engine == "vllm":
            kw = dict(settings=eval_engine_settings(cfg), seed=cfg.seed, dtype=cfg.model.dtype, tokenizer=tok)
        engine = build_engine(cfg.eval.engine, model=model, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                              batch_size=cfg.eval.batch_size, stop_token_ids=stop_token_ids(tok, eos), **kw)
        del model  # a vLLM engine holds its own copy of the weights (the HF engine keeps this one)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns) as progress:
            for name, items in todo.items():
                if items:
                    _generate_benchmark(name, items, out / f"{name}.jsonl", cfg, engine, tok, pool, progress)
        engine.close()


# ---------------------------------------------------------------- regrade
def regrade(out_dir: str | Path, workers: int = 2, timeout: float = 5.0, grader: str | None = None) -> dict[str, Any]:
    """Re-extract and re-grade every saved response against its saved gold; no generation.

    `grader` names a profile to grade under instead of the recorded settings (which are
    then rewritten in eval_config.json). Rewrites each `<benchmark>.jsonl` atomically and
    `results.json` (over all saved samples), and returns the new results object.
    """
    out = Path(out_dir)
    settings = _read_settings(out)
    if settings is None:
        raise EvalError(f"{out} holds no {SETTINGS} or {RESULTS}: not an eval output dir.")
    names = [b for b in settings.get("benchmarks", []) if (out / f"{b}.jsonl").exists()]
    if not names:
        raise EvalError(f"{out} holds no per-sample files ({', '.join(settings.get('benchmarks', []))}.jsonl).")
    old = settings
    if grader is not None:
        try:
            chosen = grader_settings(grader)
        except ValueError as err:
            raise EvalError(f"--grader: {err}") from None
        settings = {**settings, "grader": grader, "grader_rel_tol": None, "grader_percent": None,
                    "grader_fallback": None}
    else:  # as recorded; a dir from before settings were recorded gets the default profile
        chosen = GraderSettings(**settings["grader_settings"]) if "grader_settings" in settings else GraderSettings()
        settings = {"grader": "default", **settings}
    settings = {**settings, "grader_settings": chosen.as_dict()}
    if settings != old:
        _atomic_write(out / SETTINGS, json.dumps(settings, indent=2) + "\n")
    summaries = {}
    with GradingPool(workers, timeout, chosen) as pool:
        for name in names:
            path = out / f"{name}.jsonl"
            records = load_records(path)
            oks = _grade_rows(pool, records)
            for r, ok in zip(records, oks):
                r["extracted"] = extract_answer(r["response"], chosen.fallback, chosen.join_boxes)
                r["correct"] = bool(ok)
            _atomic_write(path, _jsonl(records))
            summaries[name] = summarize(records, samples_per_problem(settings, name), settings.get("pass_k", ()))
    results = build_results(settings, summaries)
    old_results = json.loads((out / RESULTS).read_text()) if (out / RESULTS).is_file() else {}
    if "base_model" in old_results:  # a shipped toy base keeps its record
        results["base_model"] = old_results["base_model"]
    _atomic_write(out / RESULTS, json.dumps(results, indent=2) + "\n")
    return results
