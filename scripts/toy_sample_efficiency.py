#!/usr/bin/env python
"""Toy lab: does replay buy more accuracy per generated rollout, and is it the paper's design or reuse as such?

Arms (all share the cached supervised warm start and, unless the arm says otherwise, the
generation budget: trainer.prompts_per_step=16, trainer.group_size=8, --steps steps):

  grpo          plain GRPO, fresh rollouts only
  grpo_2x       GRPO with trainer.prompts_per_step=32: about the update size of replay at
                ratio 1, but twice the generation (separates "replay" from "a bigger batch");
                it evals every eval_every/2 steps so its evals fall at the same rollout counts
  naive_replay  method=naive_replay (FIFO of whole groups, no age bound, uniform, ratio 1)
  replay        method=replay (the paper: rollout-level, tau_max 2, alpha 1, ratio 1, anchored)
  tau4 tau_none ratio0.5 alpha0 no_anchor unit_group
                replay with one factor changed (replay.tau_max=4 / null, replay.replay_ratio=0.5,
                replay.alpha=0, replay.anchor=false, replay.unit=group)

Regimes: "low" (trainer.lr=1e-4: rollouts barely go stale) and "high" (trainer.lr=3e-4:
staleness hurts). By default the high regime drops ratio0.5 and unit_group (see
DEFAULT_DROP_IN_HIGH) so that the whole experiment fits in about 45 minutes on 2 cores.

Each run is `replaygrpo train <overrides> hydra.run.dir=<out>/<regime>/<arm>/seed<k>` in its
own process (OMP_NUM_THREADS=1), --jobs at a time. Runs with a summary.json are skipped, so
rerunning the same command resumes (interrupted runs continue from their signal checkpoint,
resume=auto). A failed run is reported with the tail of its stderr and left out of the
analysis, and listed in the report.

The analysis (also alone with --analyze-only) writes docs/results/toy_sample_efficiency.md
and the plots docs/results/toy_sample_efficiency_*.png. The reading in the report is
generated from the numbers; the section between the LEAD-NOTES markers is kept verbatim when
the report is regenerated.

  scripts/toy_sample_efficiency.sh                      # the full experiment (~40 min, 2 cores)
  scripts/toy_sample_efficiency.sh --dry-run            # the run list and the ETA only
  scripts/toy_sample_efficiency.sh --analyze-only       # re-analyse the runs on disk
  scripts/toy_sample_efficiency.sh --steps 3 --seeds 1 --central-seeds 1 --arms grpo,replay \\
      --regimes low --out /tmp/tse_test --doc-dir /tmp/tse_test/docs   # a smoke test
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from replaygrpo.metrics import read_metrics  # noqa: E402

# ----------------------------------------------------------------------------- the design
REPLAY = ["method=replay"]
ARMS: dict[str, dict[str, Any]] = {
    # overrides, a relative cost per step (for the ETA only: measured, generation is ~30% of a GRPO step and
    # the update ~70%, so ratio-1 replay, which doubles the update batch, costs ~0.3 + 0.7 x 2 = 1.7; measured 1.8), and a description
    "grpo": dict(overrides=["method=grpo"], cost=1.0,
                 desc="GRPO, fresh rollouts only (16 prompts x 8)"),
    "grpo_2x": dict(overrides=["method=grpo", "trainer.prompts_per_step=32"], cost=2.0,
                    desc="GRPO with 32 prompts per step: ~replay's update size, twice the generation"),
    "naive_replay": dict(overrides=["method=naive_replay"], cost=1.8,
                         desc="FIFO of whole groups (cap 1024), no age bound, uniform, ratio 1, anchored"),
    "replay": dict(overrides=REPLAY, cost=1.8,
                   desc="the paper: rollout-level, tau_max 2, |A| priority (alpha 1), ratio 1, fresh-anchored"),
    "tau4": dict(overrides=REPLAY + ["replay.tau_max=4"], cost=1.8, desc="replay, tau_max 4"),
    "tau_none": dict(overrides=REPLAY + ["replay.tau_max=null"], cost=1.8, desc="replay, no age bound"),
    "ratio0.5": dict(overrides=REPLAY + ["replay.replay_ratio=0.5"], cost=1.4, desc="replay, ratio 0.5"),
    "alpha0": dict(overrides=REPLAY + ["replay.alpha=0"], cost=1.8, desc="replay, uniform sampling (alpha 0)"),
    "no_anchor": dict(overrides=REPLAY + ["replay.anchor=false"], cost=1.0,
                      desc="replay displaces fresh rollouts (anchor false, batch size kept)"),
    "unit_group": dict(overrides=REPLAY + ["replay.unit=group"], cost=1.8,
                       desc="replay stores and samples whole groups"),
}
ABLATIONS = ["tau4", "tau_none", "ratio0.5", "alpha0", "no_anchor", "unit_group"]
ABLATION_WHAT = {"tau4": "age bound 4 instead of 2", "tau_none": "no age bound",
                 "ratio0.5": "half the replay, ratio 0.5", "alpha0": "uniform sampling instead of |A| priority",
                 "no_anchor": "replay displaces fresh rollouts", "unit_group": "whole-group storage"}
DESIGN_ABLATIONS = ["tau4", "tau_none", "alpha0", "no_anchor", "unit_group"]
"""Ablations of the design; ratio0.5 changes the amount of reuse, not the design."""
REGIME_LR = {"low": 1e-4, "high": 3e-4}
REGIME_DESC = {"low": "rollouts barely go stale", "high": "staleness hurts"}
DEFAULT_DROP_IN_HIGH = ["ratio0.5", "unit_group"]
"""Dropped from the high-lr regime by default to fit the ~45 min budget on 2 cores (see the ETA model)."""
CENTRAL = ["grpo", "replay"]

# ETA model, measured on the toy defaults (2 runs in parallel on 2 cores): seconds per step of a
# cost-1 arm, seconds per 512-problem eval, seconds of process start-up (imports, model, data).
STEP_S, EVAL_S, START_S = 0.5, 1.5, 10.0

OUT_DEFAULT = "runs/toy_sample_efficiency"
DOC_DEFAULT = "docs/results"
REPORT = "toy_sample_efficiency.md"
LEAD_BEGIN = "<!-- LEAD-NOTES:BEGIN (kept verbatim when the report is regenerated) -->"
LEAD_END = "<!-- LEAD-NOTES:END -->"


@dataclass
class Job:
    regime: str
    arm: str
    seed: int
    run_dir: Path
    cmd: list[str]
    cost_s: float  # predicted seconds at 2-parallel speed


def arm_eval_every(arm: str, eval_every: int) -> int:
    # grpo_2x generates twice the rollouts per step: evaluating twice as often puts its evals at the
    # same rollout counts as the 1x arms, so "accuracy at equal rollouts" needs no interpolation.
    if arm == "grpo_2x" and eval_every > 1:
        return max(1, eval_every // 2)
    return eval_every


def n_evals(steps: int, every: int) -> int:
    """Evals a run makes: at the start, every `every` steps and at the end."""
    return 1 + (steps // every if every else 0) + (0 if every and steps % every == 0 else 1)


def plan(args: argparse.Namespace, rg_bin: str) -> list[Job]:
    jobs = []
    for regime in args.regimes:
        lr = REGIME_LR[regime] if regime not in args.lr else args.lr[regime]
        arms = [a for a in args.arms if not (regime == "high" and a in args.drop_in_high)]
        for arm in arms:
            n_seeds = args.central_seeds if arm in CENTRAL else args.seeds
            for seed in range(n_seeds):
                run_dir = Path(args.out) / regime / arm / f"seed{seed}"
                every = arm_eval_every(arm, args.eval_every)
                cmd = [rg_bin, "train", *ARMS[arm]["overrides"], f"seed={seed}", f"trainer.lr={lr}",
                       f"trainer.steps={args.steps}", f"trainer.eval_every={every}",
                       f"trainer.eval_size={args.eval_size}", *args.override, "resume=auto",
                       f"hydra.run.dir={run_dir}"]
                cost = (START_S + args.steps * STEP_S * ARMS[arm]["cost"]
                        + n_evals(args.steps, every) * EVAL_S * args.eval_size / 512)
                jobs.append(Job(regime, arm, seed, run_dir, cmd, cost))
    # seed-major order (an interrupted experiment still has balanced arms), costly first within a seed
    jobs.sort(key=lambda j: (j.seed, -j.cost_s))
    return jobs


# ----------------------------------------------------------------------------- the runner
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()
_stopping = threading.Event()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", HYDRA_FULL_ERROR="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def _tail(path: Path, n: int = 25) -> str:
    if not path.exists():
        return "(no stderr file)"
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def run_one(job: Job) -> dict[str, Any]:
    """Run one training process; returns {rc, wall_s, error} and writes runner.json into the run dir."""
    if _stopping.is_set():
        return {"rc": None, "wall_s": 0.0, "error": "not started (stopping)"}
    job.run_dir.mkdir(parents=True, exist_ok=True)
    stale = job.run_dir / ".failed"
    if stale.exists():
        stale.unlink()
    out_f = (job.run_dir / "runner_stdout.txt").open("w")
    err_f = (job.run_dir / "runner_stderr.txt").open("w")
    t0 = time.time()
    with out_f, err_f:
        # its own session: a Ctrl-C reaches this script only, which then sends each child one SIGTERM
        # (the trainer checkpoints at the end of the step and exits; rerunning resumes it)
        proc = subprocess.Popen(job.cmd, cwd=REPO, env=_env(), stdout=out_f, stderr=err_f,
                                start_new_session=True)
        with _children_lock:
            _children[proc.pid] = proc
        rc = proc.wait()
        with _children_lock:
            _children.pop(proc.pid, None)
    wall = time.time() - t0
    ok = rc == 0 and (job.run_dir / "summary.json").exists()
    info = {"rc": rc, "wall_s": wall, "cmd": job.cmd, "finished": ok,
            "date": dt.datetime.now().isoformat(timespec="seconds")}
    (job.run_dir / "runner.json").write_text(json.dumps(info, indent=2))
    if not ok:
        info["error"] = _tail(job.run_dir / "runner_stderr.txt")
    return info


def _stop_children(signum: int | None = None, frame: Any = None) -> None:
    if _stopping.is_set():
        return
    _stopping.set()
    print("\nstopping: each running job gets one SIGTERM, checkpoints and exits; rerun the same command "
          "to resume.", flush=True)
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def fmt_min(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def warm_up(args: argparse.Namespace, rg_bin: str) -> None:
    """One tiny run, alone, so the cached warm start is built once and not raced by parallel jobs."""
    run_dir = Path(args.out) / "_warmup"
    cmd = [rg_bin, "train", "method=grpo", "trainer.steps=1", "trainer.prompts_per_step=2",
           "trainer.eval_size=8", *args.override, "overwrite=true", f"hydra.run.dir={run_dir}"]
    print("warm-up run (builds the cached warm start if missing, ~90 s then; ~10 s otherwise):", flush=True)
    print("  " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"the warm-up run failed (rc {res.returncode}); nothing else was started.")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


def pending(args: argparse.Namespace, jobs: list[Job]) -> list[Job]:
    """The jobs without a summary.json; refuses an out dir that holds runs of another length."""
    todo = []
    for job in jobs:
        summary = job.run_dir / "summary.json"
        if summary.exists():
            steps = json.loads(summary.read_text()).get("steps")
            if steps != args.steps:
                raise SystemExit(f"{job.run_dir} holds a finished run of {steps} steps, not {args.steps}; "
                                 "use another --out (or remove it) rather than mixing run lengths.")
        else:
            todo.append(job)
    return todo


def run_all(args: argparse.Namespace, jobs: list[Job], todo: list[Job], rg_bin: str) -> list[tuple[Job, dict[str, Any]]]:
    done_before = len(jobs) - len(todo)
    total_pred = sum(j.cost_s for j in todo) / args.jobs
    print(f"{len(jobs)} runs planned, {done_before} already finished (skipped), {len(todo)} to run with "
          f"--jobs {args.jobs}: predicted ~{fmt_min(total_pred)} (+ the warm-up)", flush=True)
    if not todo:
        return []
    warm_up(args, rg_bin)

    def on_signal(signum: int, frame: Any) -> None:
        if _stopping.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now (the jobs already got their SIGTERM)
        _stop_children()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # explicit: also works where SIGINT was ignored at start-up
    t_start = time.time()
    results: list[tuple[Job, dict[str, Any]]] = []
    pred_done = real_done = 0.0
    remaining_pred = sum(j.cost_s for j in todo)
    ex = cf.ThreadPoolExecutor(max_workers=args.jobs)
    futures = {ex.submit(run_one, j): j for j in todo}
    try:
        for fut in cf.as_completed(futures):
            job = futures[fut]
            info = fut.result()
            results.append((job, info))
            remaining_pred -= job.cost_s
            if info.get("finished"):
                pred_done += job.cost_s
                real_done += info["wall_s"]
            scale = real_done / pred_done if pred_done else 1.0
            elapsed = time.time() - t_start
            eta = remaining_pred * scale / args.jobs
            tag = f"{job.regime}/{job.arm}/seed{job.seed}"
            if info.get("rc") is None:  # never started: we are stopping
                continue
            if info.get("finished"):
                s = json.loads((job.run_dir / "summary.json").read_text())
                acc = s.get("final_accuracy")
                msg = f"ok   {tag}: final acc {acc:.3f} in {info['wall_s']:.0f} s" if acc is not None else f"ok   {tag}"
            elif _stopping.is_set():
                msg = f"stopped {tag} (checkpointed; a rerun resumes it)"
            else:
                msg = f"FAIL {tag} (rc {info.get('rc')})"
            print(f"[{len(results)}/{len(todo)}] {msg} | elapsed {fmt_min(elapsed)}, ETA ~{fmt_min(eta)}"
                  f" (x{scale:.2f} vs the model)", flush=True)
            if not info.get("finished") and info.get("error") and not _stopping.is_set():
                print("     stderr tail:\n" + "\n".join("       " + ln for ln in info["error"].splitlines()),
                      flush=True)
    except KeyboardInterrupt:
        _stop_children()
        ex.shutdown(wait=False, cancel_futures=True)
        raise SystemExit(130)
    ex.shutdown(wait=True)
    if _stopping.is_set():
        raise SystemExit("stopped before the end: no report written; rerun the same command to resume "
                         "(finished runs are skipped, stopped ones continue from their checkpoint).")
    failed = [(j, i) for j, i in results if not i.get("finished")]
    print(f"runs done in {fmt_min(time.time() - t_start)}; {len(failed)} failed", flush=True)
    return results


# ----------------------------------------------------------------------------- statistics
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz, Numerical Recipes)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (exact, via the incomplete beta)."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_ppf(q: float, df: float) -> float:
    """The q-quantile (q > 0.5) of Student's t, by bisection on the exact CDF."""
    target = 2.0 * (1.0 - q)  # two-sided tail mass at the quantile
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


try:  # scipy, when installed, is the reference; the fallback above is exact too (checked in self_check)
    from scipy import stats as _sps  # type: ignore
except ImportError:  # pragma: no cover
    _sps = None
P_SOURCE = ("scipy.stats.ttest_ind(equal_var=False)" if _sps is not None else
            "Welch's t with the exact Student-t tail (regularised incomplete beta; scipy is not installed)")


def self_check() -> None:
    """Known quantiles of Student's t: two-sided p = 0.05 at these t values."""
    for t, df in ((12.7062, 1), (4.302653, 2), (2.776445, 4), (2.228139, 10), (1.959964, 1e7)):
        p = t_two_sided_p(t, df)
        assert abs(p - 0.05) < 2e-5, (t, df, p)
        assert abs(t_ppf(0.975, df) - t) < 1e-3, (t, df, t_ppf(0.975, df))
    assert abs(t_two_sided_p(1.0, 3) - 0.3910022) < 1e-6  # P(|T_3| > 1), closed form


def mean_ci(x: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and the 95% CI half-width (Student t) of the seeds."""
    a = np.asarray(x, dtype=float)
    if len(a) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(a) == 1:
        return float(a[0]), float("nan"), float("nan")
    sd = float(a.std(ddof=1))
    return float(a.mean()), sd, t_ppf(0.975, len(a) - 1) * sd / math.sqrt(len(a))


def welch(a: list[float], b: list[float]) -> dict[str, float] | None:
    """Welch's unequal-variance t-test of mean(a) - mean(b), with the 95% CI of the difference."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return None
    v1, v2 = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff, se2 = float(x.mean() - y.mean()), float(v1 + v2)
    if se2 == 0:
        return {"diff": diff, "t": float("nan"), "df": float("nan"), "p": float("nan"), "half": 0.0}
    df = float(se2 ** 2 / (v1 ** 2 / (len(x) - 1) + v2 ** 2 / (len(y) - 1)))
    t = diff / math.sqrt(se2)
    p = float(_sps.ttest_ind(x, y, equal_var=False).pvalue) if _sps is not None else t_two_sided_p(t, df)
    return {"diff": diff, "t": t, "df": df, "p": p, "half": t_ppf(0.975, df) * math.sqrt(se2)}


def interaction(high: list[list[float]], low: list[list[float]]) -> dict[str, float] | None:
    """(mean A_high − mean B_high) − (mean A_low − mean B_low), with a Welch-Satterthwaite t-test."""
    groups = [np.asarray(g, dtype=float) for g in high + low]
    if any(len(g) < 2 for g in groups):
        return None
    terms = [g.var(ddof=1) / len(g) for g in groups]
    d_high = float(groups[0].mean() - groups[1].mean())
    d_low = float(groups[2].mean() - groups[3].mean())
    se2 = float(sum(terms))
    if se2 == 0:
        return None
    df = se2 ** 2 / sum(t ** 2 / (len(g) - 1) for t, g in zip(terms, groups))
    t = (d_high - d_low) / math.sqrt(se2)
    return {"high": d_high, "low": d_low, "diff": d_high - d_low, "t": t, "df": df,
            "p": t_two_sided_p(t, df), "half": t_ppf(0.975, df) * math.sqrt(se2)}


def holm(ps: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan, not counted)."""
    idx = [i for i, p in enumerate(ps) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: ps[i])
    m, out, running = len(order), [float("nan")] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


# ----------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    regime: str
    arm: str
    seed: int
    path: Path
    start: float
    lr: float | None
    steps: int
    evals: np.ndarray  # columns: step, rollouts generated, cumulative update tokens, accuracy (row 0 = start)
    step_s: float  # median time/step over non-eval steps
    wall_s: float | None
    n_replay: float  # mean replayed rollouts per step
    age_mean: float  # mean age of the replayed rollouts (over steps that replayed)
    tokens: float  # cumulative update tokens at the end
    rollouts: float
    derived: dict[str, float] = field(default_factory=dict)


def _hydra_cfg(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def load_run(regime: str, arm: str, seed: int, run_dir: Path) -> Run:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir / "metrics.jsonl")
    cum_tok, ev = 0.0, [[0.0, 0.0, 0.0, float(summary["start_accuracy"])]]
    step_times, n_rep, ages = [], [], []
    for r in rows:
        cum_tok += r.get("tokens/trained", 0)
        if "eval/accuracy" in r:
            ev.append([r["step"], r["rollouts/generated"], cum_tok, r["eval/accuracy"]])
        else:
            step_times.append(r["time/step"])
        n_rep.append(r.get("batch/n_replay", 0))
        if r.get("batch/n_replay", 0):
            ages.append(r.get("replay/age_mean", 0.0))
    cfg = _hydra_cfg(run_dir)
    runner = run_dir / "runner.json"
    wall = json.loads(runner.read_text()).get("wall_s") if runner.exists() else None
    if not step_times:  # every step evaluated (tiny runs)
        step_times = [r["time/step"] for r in rows]
    return Run(regime, arm, seed, run_dir, float(summary["start_accuracy"]),
               cfg.get("trainer", {}).get("lr"), int(summary["steps"]), np.asarray(ev, dtype=float),
               float(np.median(step_times)), wall, float(np.mean(n_rep)) if n_rep else 0.0,
               float(np.mean(ages)) if ages else float("nan"), cum_tok,
               float(rows[-1]["rollouts/generated"]) if rows else 0.0)


def discover(out: Path) -> tuple[list[Run], list[dict[str, str]]]:
    """Finished runs under out/<regime>/<arm>/seed<k>, and the ones that are not (failed or unfinished)."""
    runs, bad = [], []
    for regime_dir in sorted(p for p in out.iterdir() if p.is_dir() and p.name in REGIME_LR):
        for arm_dir in sorted(p for p in regime_dir.iterdir() if p.is_dir()):
            for seed_dir in sorted(arm_dir.glob("seed*")):
                seed = int(seed_dir.name[4:])
                if (seed_dir / "summary.json").exists():
                    try:
                        runs.append(load_run(regime_dir.name, arm_dir.name, seed, seed_dir))
                    except Exception as err:  # noqa: BLE001  (report it, do not drop it silently)
                        bad.append({"run": str(seed_dir), "status": "unreadable", "why": f"{type(err).__name__}: {err}"})
                    continue
                why = ""
                if (seed_dir / ".failed").exists():
                    why = (seed_dir / ".failed").read_text().strip()
                elif (seed_dir / "runner.json").exists():
                    why = _tail(seed_dir / "runner_stderr.txt", 3)
                status = "failed" if why else "unfinished"
                bad.append({"run": str(seed_dir), "status": status, "why": why or "no summary.json"})
    return runs, bad


def window_mean(xs: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Mean of y interpolated (linearly, in x) at the points xs; nan if a point lies past the run's end."""
    if len(xs) == 0 or xs.max() > x.max() + 1e-9:
        return float("nan")
    return float(np.mean(np.interp(xs, x, y)))


def derive(runs: list[Run], window: int) -> dict[str, dict[str, Any]]:
    """Per regime: the reference points (equal rollouts, equal update tokens) and each run's derived numbers."""
    info: dict[str, dict[str, Any]] = {}
    for regime in [g for g in REGIME_LR if any(r.regime == g for r in runs)]:
        rr = [r for r in runs if r.regime == regime]
        # equal rollouts: the last `window` eval points of a 1x-generation run (the smallest budget)
        one_x = min(rr, key=lambda r: (r.rollouts, r.arm != "replay"))
        x_roll = one_x.evals[1:, 1][-window:] if len(one_x.evals) > 1 else one_x.evals[:, 1]
        # equal update tokens: the same relative positions of the smallest final token count
        t_min = min(r.tokens for r in rr)
        x_tok = t_min * x_roll / one_x.rollouts if one_x.rollouts else x_roll * 0
        for r in rr:
            acc = r.evals[:, 3]
            last = acc[1:][-window:] if len(acc) > 1 else acc
            r.derived = {
                "final": float(np.mean(last)),
                "gain": float(np.mean(last)) - r.start,
                "at_rollouts": window_mean(x_roll, r.evals[:, 1], acc),
                "at_tokens": window_mean(x_tok, r.evals[:, 2], acc),
            }
        info[regime] = {"x_roll": x_roll, "x_tok": x_tok, "budget_rollouts": float(x_roll[-1]),
                        "budget_tokens": float(t_min), "lr": rr[0].lr}
    return info


# ----------------------------------------------------------------------------- comparisons
@dataclass
class Comparison:
    regime: str
    a: str
    b: str
    metric: str  # key of Run.derived
    label: str
    primary: bool
    res: dict[str, float] | None = None
    holm_p: float = float("nan")


METRIC_LABEL = {"final": "acc, last evals (equal steps)", "at_rollouts": "acc at equal rollouts",
                "at_tokens": "acc at equal update tokens"}


def comparisons(runs: list[Run]) -> list[Comparison]:
    out: list[Comparison] = []
    for regime in [g for g in REGIME_LR if any(r.regime == g for r in runs)]:
        arms = {r.arm for r in runs if r.regime == regime}

        def add(a: str, b: str, metric: str, label: str, primary: bool = True) -> None:
            if a in arms and b in arms:
                out.append(Comparison(regime, a, b, metric, label, primary))

        add("replay", "grpo", "at_rollouts", "replay vs grpo (same generation)")
        add("replay", "grpo_2x", "at_rollouts", "replay vs grpo_2x at equal rollouts")
        add("replay", "naive_replay", "at_rollouts", "replay vs naive_replay")
        for abl in ABLATIONS:
            add(abl, "replay", "at_rollouts", f"{abl} vs replay")
        add("grpo_2x", "grpo", "final", "grpo_2x vs grpo at equal steps (2x rollouts)", False)
        add("replay", "grpo_2x", "final", "replay vs grpo_2x at equal steps (~equal update tokens)", False)
        add("replay", "grpo", "at_tokens", "replay vs grpo at equal update tokens", False)
        add("naive_replay", "grpo", "at_rollouts", "naive_replay vs grpo (same generation)", False)
    for c in out:
        xa = [r.derived[c.metric] for r in runs if r.regime == c.regime and r.arm == c.a]
        xb = [r.derived[c.metric] for r in runs if r.regime == c.regime and r.arm == c.b]
        c.res = welch([v for v in xa if not math.isnan(v)], [v for v in xb if not math.isnan(v)])
    for regime in {c.regime for c in out}:
        fam = [c for c in out if c.regime == regime and c.primary and c.res is not None]
        for c, p in zip(fam, holm([c.res["p"] for c in fam])):
            c.holm_p = p
    return out


def pts(x: float, signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def p_eq(p: float, name: str = "p") -> str:
    s = fmt_p(p)
    return f"{name} < 0.001" if s == "<0.001" else f"{name} = {s}"


def verdict(c: Comparison) -> str:
    r = c.res
    if r is None:
        return "not testable (needs at least 2 seeds per arm)"
    if math.isnan(r["p"]):
        return "not testable (no spread between seeds)"
    if r["p"] >= 0.05:
        return "within noise"
    word = "higher" if r["diff"] > 0 else "lower"
    if not c.primary or math.isnan(c.holm_p):
        return f"significantly {word} (p<0.05)"
    return f"significantly {word}" + (" (survives Holm)" if c.holm_p < 0.05 else " (p<0.05, not after Holm)")


def describe(c: Comparison | None, name_a: str | None = None, name_b: str | None = None) -> str:
    if c is None or c.res is None:
        return "not measured (missing arm or fewer than 2 seeds)"
    r = c.res
    ci = f"[{pts(r['diff'] - r['half'], True)}, {pts(r['diff'] + r['half'], True)}]"
    return (f"Δ = {pts(r['diff'], True)} pts (95% CI {ci}, {p_eq(r['p'])}"
            + (f", {p_eq(c.holm_p, 'Holm p')}" if c.primary and not math.isnan(c.holm_p) else "")
            + f"): **{verdict(c)}**")


# ----------------------------------------------------------------------------- plots
ARM_ORDER = list(ARMS)
COLORS = {"grpo": "#444444", "grpo_2x": "#999999", "naive_replay": "#d62728", "replay": "#1f77b4",
          "tau4": "#2ca02c", "tau_none": "#ff7f0e", "ratio0.5": "#9467bd", "alpha0": "#8c564b",
          "no_anchor": "#e377c2", "unit_group": "#17becf"}


def band(runs: list[Run], col: int, x_max: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed mean and std of accuracy on a common x grid (each run interpolated, no extrapolation)."""
    end = min(r.evals[-1, col] for r in runs) if x_max is None else min(x_max, min(r.evals[-1, col] for r in runs))
    grid = np.unique(np.concatenate([r.evals[:, col] for r in runs]))
    grid = grid[grid <= end + 1e-9]
    ys = np.stack([np.interp(grid, r.evals[:, col], r.evals[:, 3]) for r in runs])
    return grid, ys.mean(0), ys.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(grid))


def make_plots(runs: list[Run], info: dict[str, dict[str, Any]], doc_dir: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for regime, ri in info.items():
        arms = [a for a in ARM_ORDER if any(r.regime == regime and r.arm == a for r in runs)]
        panels = [("main arms", [a for a in arms if a not in ABLATIONS]),
                  ("one factor changed (vs replay and grpo)", [a for a in arms if a in ABLATIONS or a in ("replay", "grpo")])]
        panels = [p for p in panels if p[1]]
        for col, axis, fname, scale in ((1, "rollouts generated", "rollouts", 1.0), (2, "update tokens (k, cumulative)", "tokens", 1e3)):
            fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False, sharey=True)
            for ax, (title, parm) in zip(axes[0], panels):
                for arm in parm:
                    rs = [r for r in runs if r.regime == regime and r.arm == arm]
                    x, m, s = band(rs, col)
                    ax.plot(x / scale, 100 * m, color=COLORS.get(arm), label=f"{arm} (n={len(rs)})", marker=".", ms=4)
                    ax.fill_between(x / scale, 100 * (m - s), 100 * (m + s), color=COLORS.get(arm), alpha=0.15, lw=0)
                if col == 1:
                    ax.axvline(ri["budget_rollouts"], color="k", ls=":", lw=0.8)
                else:
                    ax.axvline(ri["budget_tokens"] / scale, color="k", ls=":", lw=0.8)
                ax.set_title(f"{regime} lr ({ri['lr']}): {title}", fontsize=10)
                ax.set_xlabel(axis)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8, loc="lower right")
            axes[0][0].set_ylabel("toy test accuracy, greedy (%)  [mean ± std over seeds]")
            fig.tight_layout()
            name = f"toy_sample_efficiency_{fname}_{regime}.png"
            fig.savefig(doc_dir / name, dpi=110)
            plt.close(fig)
            made.append((f"{regime} lr: accuracy vs {axis}", name))
    # summary: final-window accuracy with 95% CI per arm and regime
    regimes = list(info)
    arms = [a for a in ARM_ORDER if any(r.arm == a for r in runs)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(arms) + 2), 4.2))
    width = 0.8 / max(1, len(regimes))
    for k, regime in enumerate(regimes):
        for i, arm in enumerate(arms):
            vals = [r.derived["at_rollouts"] for r in runs if r.regime == regime and r.arm == arm]
            vals = [v for v in vals if not math.isnan(v)]
            if not vals:
                continue
            m, _, h = mean_ci(vals)
            x = i + (k - (len(regimes) - 1) / 2) * width
            ax.errorbar(x, 100 * m, yerr=None if math.isnan(h) else 100 * h, fmt="o",
                        color=["#1f77b4", "#d62728", "#2ca02c"][k % 3], capsize=3, label=regime if i == 0 else None)
            ax.scatter([x] * len(vals), [100 * v for v in vals], s=8, color="k", alpha=0.4, zorder=3)
    starts = [r.start for r in runs]
    ax.axhline(100 * float(np.mean(starts)), color="k", ls=":", lw=0.8, label="warm start")
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.set_ylabel("acc at equal rollouts (%), mean and 95% CI")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(doc_dir / "toy_sample_efficiency_summary.png", dpi=110)
    plt.close(fig)
    made.insert(0, ("accuracy at the 1x generation budget, every arm and regime (dots: seeds)",
                    "toy_sample_efficiency_summary.png"))
    return made


# ----------------------------------------------------------------------------- the report
def arm_table(runs: list[Run], regime: str, ri: dict[str, Any]) -> str:
    head = ("| arm | seeds | acc, last evals (%) mean ± std [95% CI] | gain over warm start (pts) "
            f"| acc at {ri['budget_rollouts']:.0f} rollouts (%) | acc at {ri['budget_tokens'] / 1e3:.0f}k update tokens (%) "
            "| rollouts generated | update tokens (k) | replayed / step | replay age | s / step (median) | wall s / run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for arm in ARM_ORDER:
        rs = [r for r in runs if r.regime == regime and r.arm == arm]
        if not rs:
            continue

        def ms(key: str) -> str:
            vals = [r.derived[key] for r in rs if not math.isnan(r.derived[key])]
            if not vals:
                return "n/a"
            m, sd, h = mean_ci(vals)
            return f"{pts(m)} ± {pts(sd)}" if key != "final" else (
                f"{pts(m)} ± {pts(sd)} [{pts(m - h)}, {pts(m + h)}]" if not math.isnan(h) else pts(m))

        g = mean_ci([r.derived["gain"] for r in rs])
        walls = [r.wall_s for r in rs if r.wall_s]
        ages = [r.age_mean for r in rs if not math.isnan(r.age_mean)]
        lines.append(
            f"| {arm} | {len(rs)} | {ms('final')} | {pts(g[0], True)} ± {pts(g[1])} | {ms('at_rollouts')} | "
            f"{ms('at_tokens')} | {np.mean([r.rollouts for r in rs]):.0f} | {np.mean([r.tokens for r in rs]) / 1e3:.1f} | "
            f"{np.mean([r.n_replay for r in rs]):.1f} | {f'{np.mean(ages):.2f}' if ages else '—'} | "
            f"{np.median([r.step_s for r in rs]):.2f} | {f'{np.median(walls):.0f}' if walls else '—'} |")
    return "\n".join(lines)


def comparison_table(comps: list[Comparison], regime: str) -> str:
    lines = ["| comparison (A vs B) | metric | A − B (pts) | 95% CI (pts) | t | df | p | Holm p | reading |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in comps:
        if c.regime != regime:
            continue
        r = c.res
        if r is None:
            lines.append(f"| {c.label}{'' if c.primary else ' ²'} | {METRIC_LABEL[c.metric]} | n/a | | | | | | {verdict(c)} |")
            continue
        ci = f"[{pts(r['diff'] - r['half'], True)}, {pts(r['diff'] + r['half'], True)}]"
        lines.append(f"| {c.label}{'' if c.primary else ' ²'} | {METRIC_LABEL[c.metric]} | {pts(r['diff'], True)} | {ci} | "
                     f"{r['t']:.2f} | {r['df']:.1f} | {fmt_p(r['p'])} | "
                     f"{fmt_p(c.holm_p) if c.primary else '—'} | {verdict(c)} |")
    return "\n".join(lines)


def reading(runs: list[Run], comps: list[Comparison], info: dict[str, dict[str, Any]]) -> str:
    """The reading, generated from the numbers: every claim follows a measured difference and its test."""
    def get(regime: str, a: str, b: str, metric: str) -> Comparison | None:
        return next((c for c in comps if c.regime == regime and c.a == a and c.b == b and c.metric == metric), None)

    def arm_mean(regime: str, arm: str, key: str) -> float:
        vals = [r.derived[key] for r in runs if r.regime == regime and r.arm == arm and not math.isnan(r.derived[key])]
        return float(np.mean(vals)) if vals else float("nan")

    def sig(c: Comparison | None) -> int:
        """+1 / -1 for a significant (p<0.05) difference A − B, 0 otherwise."""
        if c is None or c.res is None or math.isnan(c.res["p"]) or c.res["p"] >= 0.05:
            return 0
        return 1 if c.res["diff"] > 0 else -1

    out = []
    for regime, ri in info.items():
        out.append(f"### {regime} lr ({ri['lr']}: {REGIME_DESC.get(regime, '')})\n")
        rg, rp = arm_mean(regime, "grpo", "at_rollouts"), arm_mean(regime, "replay", "at_rollouts")
        start = float(np.mean([r.start for r in runs if r.regime == regime]))
        c1 = get(regime, "replay", "grpo", "at_rollouts")
        out.append(f"**1. Accuracy per generated rollout.** From the warm start's {pts(start)}%, at the same "
                   f"generation budget ({ri['budget_rollouts']:.0f} rollouts) replay reaches {pts(rp)}% and GRPO "
                   f"{pts(rg)}%: {describe(c1)}.")
        s1 = sig(c1)
        if c1 is not None and c1.res is not None:
            if s1 > 0:
                out.append("In this regime replay buys accuracy per generated rollout.")
            elif s1 < 0:
                out.append("In this regime replay *costs* accuracy per generated rollout.")
            else:
                out.append(f"No measurable difference per rollout here: with these seeds, differences smaller "
                           f"than about ±{pts(c1.res['half'])} pts (the CI half-width) cannot be resolved.")
        c2 = get(regime, "replay", "grpo_2x", "at_rollouts")
        c2s = get(regime, "grpo_2x", "grpo", "final")
        c2t = get(regime, "replay", "grpo_2x", "final")
        if c2 is not None:
            out.append(f"\n**2. Replay or a bigger batch?** GRPO with twice the prompts per step, read at the same "
                       f"rollouts generated, reaches {pts(arm_mean(regime, 'grpo_2x', 'at_rollouts'))}%; "
                       f"replay − grpo_2x: {describe(c2)}. At the same number of steps (about the same update "
                       f"tokens as replay, twice the rollouts) grpo_2x reaches "
                       f"{pts(arm_mean(regime, 'grpo_2x', 'final'))}%: grpo_2x − grpo {describe(c2s)}; "
                       f"replay − grpo_2x {describe(c2t)}.")
            s2, s2t = sig(c2), sig(c2t)
            if s1 > 0 and s2 >= 0:
                out.append("Replay beats GRPO at equal generation and is not worse than spending the same rollouts "
                           "on a bigger fresh batch" + (" (it is better)." if s2 > 0 else " (the difference is within noise)."))
            elif s1 > 0 and s2 < 0:
                out.append("Replay beats GRPO, but at the same generation a bigger fresh batch does better still: "
                           "the gain is no larger than what the extra update mass would give.")
            elif s2 < 0:
                out.append("At equal generation, the bigger fresh batch does better than replay.")
            else:
                out.append("At equal generation, replay and the bigger fresh batch are not distinguishable.")
            if s2t < 0:
                out.append("With twice the fresh rollouts, grpo_2x is better than replay at equal steps, as "
                           "expected from fresh data; replay's case rests on the per-rollout comparison.")
        c3 = get(regime, "replay", "naive_replay", "at_rollouts")
        has_abl = any(get(regime, a, "replay", "at_rollouts") for a in ABLATIONS)
        out.append(f"\n**3. The paper's design, or reuse as such?** replay − naive_replay (FIFO groups, no age "
                   f"bound, uniform): {describe(c3)}."
                   + (" One factor changed at a time (ablation − replay):\n" if has_abl else ""))
        hurt, helped, flat = [], [], []
        for abl in ABLATIONS:
            c = get(regime, abl, "replay", "at_rollouts")
            if c is None:
                continue
            out.append(f"- {abl} ({ABLATION_WHAT[abl]}): {pts(arm_mean(regime, abl, 'at_rollouts'))}%, {describe(c)}")
            (hurt if sig(c) < 0 else helped if sig(c) > 0 else flat).append(abl)
        if hurt or helped or flat:
            out.append("")
            out.append(f"Changes that significantly hurt (p<0.05 unadjusted; see the Holm column): "
                       f"{', '.join(hurt) or 'none'}; that significantly helped: {', '.join(helped) or 'none'}; "
                       f"within noise: {', '.join(flat) or 'none'}.")
        s3 = sig(c3)
        design_hurt = [a for a in hurt if a in DESIGN_ABLATIONS]
        design_helped = [a for a in helped if a in DESIGN_ABLATIONS]
        if s3 > 0 or design_hurt:
            why = []
            if s3 > 0:
                why.append("replay beats naive FIFO replay at the same amount of reuse")
            if design_hurt:
                why.append("replay beats " + ", ".join(f"{a} ({ABLATION_WHAT[a]})" for a in design_hurt))
            out.append("In this regime there is evidence that the design matters, not only reuse: "
                       + "; ".join(why) + ".")
        elif s1 > 0 and (c3 is not None or any(get(regime, a, "replay", "at_rollouts") for a in DESIGN_ABLATIONS)):
            out.append("Replay beats GRPO here, but neither naive replay nor any design ablation is measurably worse: "
                       "within this experiment's resolution the gain is attributable to reuse as such, not to the "
                       "paper's specific design.")
        elif c3 is not None and s3 == 0 and not design_helped:
            out.append("No part of the design is measurably responsible for a difference in this regime.")
        if s3 < 0:
            out.append("Naive FIFO replay does *better* than the paper's design here.")
        if design_helped:
            out.append(f"Changing the design helped here: {', '.join(f'{a} ({ABLATION_WHAT[a]})' for a in design_helped)} "
                       "did better than the paper's default.")
        if "ratio0.5" in hurt:
            out.append("Halving the replay costs accuracy: the amount of reuse matters here.")
        elif "ratio0.5" in helped:
            out.append("Halving the replay helps here: less reuse is better.")
        rs = [r for r in runs if r.regime == regime and r.arm in ("grpo", "replay")]
        if rs:
            sg = np.median([r.step_s for r in rs if r.arm == "grpo"]) if any(r.arm == "grpo" for r in rs) else float("nan")
            sr = np.median([r.step_s for r in rs if r.arm == "replay"]) if any(r.arm == "replay" for r in rs) else float("nan")
            if not (math.isnan(sg) or math.isnan(sr)):
                out.append(f"\n**Cost.** Median wall time per step (runs sharing the cores, so indicative only): "
                           f"replay {sr:.2f} s vs GRPO {sg:.2f} s ({sr / sg:.2f}x). In this toy the update is a large "
                           "share of a step, so replay's larger update batch shows up in wall time; the per-rollout "
                           "comparison above is the generation-cost view.")
        sds = [mean_ci([r.derived["at_rollouts"] for r in runs if r.regime == regime and r.arm == a])[1]
               for a in {r.arm for r in runs if r.regime == regime}]
        sds = [s for s in sds if not math.isnan(s)]
        if sds:
            out.append(f"\nNoise floor: the typical seed-to-seed std of an arm is {pts(float(np.median(sds)))} pts "
                       "(median over arms); one 512-problem eval has a binomial SE of ~2 pts.")
        out.append("")
    # across regimes: does a difference change with the learning rate (i.e. with staleness)?
    if "low" in info and "high" in info:
        def vals(regime: str, arm: str) -> list[float]:
            return [r.derived["at_rollouts"] for r in runs if r.regime == regime and r.arm == arm
                    and not math.isnan(r.derived["at_rollouts"])]

        lines = []
        for a, b in [("replay", "grpo"), ("replay", "naive_replay")] + [(x, "replay") for x in DESIGN_ABLATIONS]:
            res = interaction([vals("high", a), vals("high", b)], [vals("low", a), vals("low", b)])
            if res is None:
                continue
            lo, hi = res["low"], res["high"]
            lines.append(f"| {a} − {b} | {pts(lo, True)} | {pts(hi, True)} | {pts(res['diff'], True)} "
                         f"[{pts(res['diff'] - res['half'], True)}, {pts(res['diff'] + res['half'], True)}] | "
                         f"{fmt_p(res['p'])} | {'differs' if res['p'] < 0.05 else 'within noise'} |")
        if lines:
            out.append("### Across regimes: does the difference change with the learning rate?\n")
            out.append("If the age bound is what protects replay from stale rollouts, loosening it (tau4, tau_none) "
                       "should cost more at the higher learning rate. The test is Welch's t on the difference of "
                       "differences (Satterthwaite df over the four arms), at equal rollouts:\n")
            out.append("| difference | low lr (pts) | high lr (pts) | high − low (pts) [95% CI] | p | reading |")
            out.append("|---|---|---|---|---|---|")
            out.extend(lines)
            out.append("")
    n_primary = max([sum(1 for c in comps if c.regime == r and c.primary) for r in info] or [0])
    out.append(f"*Caveats, generated:* {n_primary} primary comparisons per regime are tested at p<0.05, so about "
               f"{0.05 * n_primary:.1f} false positive per regime is expected by chance; the Holm column controls "
               "that. A 'within noise' reading means the experiment cannot tell the arms apart, not that they are equal.")
    return "\n".join(out)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_report(args: argparse.Namespace, out: Path, doc_dir: Path) -> Path:
    runs, bad = discover(out)
    if not runs:
        raise SystemExit(f"no finished runs under {out}")
    doc_dir.mkdir(parents=True, exist_ok=True)
    info = derive(runs, args.window)
    comps = comparisons(runs)
    plots = make_plots(runs, info, doc_dir)
    meta_path = out / "experiment.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    report = doc_dir / REPORT
    lead = ("_Lead: write the interpretation here (what the numbers mean for the paper's claim, caveats, "
            "what to run next). This block survives regeneration._")
    if report.exists():
        old = report.read_text()
        if LEAD_BEGIN in old and LEAD_END in old:
            lead = old.split(LEAD_BEGIN, 1)[1].split(LEAD_END, 1)[0].strip("\n")
    steps = sorted({r.steps for r in runs})
    lrs = {regime: ri["lr"] for regime, ri in info.items()}
    md = [
        "# Toy lab: does replay buy accuracy per generated rollout, and is it the design or reuse as such?",
        "",
        "Generated by `scripts/toy_sample_efficiency.py`. The runs were launched with:",
        "",
        "```",
        meta.get("command", "(unknown: no experiment.json in the run dir)"),
        "```",
        "",
        f"- run date: {meta.get('date', 'unknown')}, machine: {meta.get('machine', machine())}, "
        f"commit {meta.get('commit', git_commit())}; `--jobs {meta.get('jobs', '?')}` runs in parallel, "
        "OMP_NUM_THREADS=1 each",
        f"- report generated {dt.datetime.now().isoformat(timespec='minutes')} from `{out}` with: "
        f"`{' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- {len(runs)} finished runs; {len(bad)} failed or unfinished (listed at the end, left out of every number)",
        f"- steps per run: {', '.join(map(str, steps))}; learning rate per regime: "
        + ", ".join(f"{k} = {v}" for k, v in lrs.items()),
        "",
        "## Design",
        "",
        "Every arm starts from the same cached supervised warm start (toy levels 1, 2, 3, 5) and, unless the arm "
        "says otherwise, generates 16 prompts x 8 completions per step. Seeds 0..n-1 per arm (more for grpo and "
        f"replay); the eval is greedy accuracy on {meta.get('eval_size', '?')} held-out toy test problems every "
        f"{meta.get('eval_every', '?')} steps (grpo_2x: every half of that, so its evals fall at the same rollout "
        "counts as the 1x arms).",
        "",
        "| arm | what it is | overrides |",
        "|---|---|---|",
    ]
    for arm in ARM_ORDER:
        if any(r.arm == arm for r in runs):
            md.append(f"| {arm} | {ARMS[arm]['desc'].replace('|', chr(92) + '|')} | `{' '.join(ARMS[arm]['overrides'])}` |")
    dropped = meta.get("drop_in_high")
    if dropped and "high" in info:
        md.append("")
        md.append(f"The high-lr regime leaves out {', '.join(dropped)} to fit the time budget (about 45 min on 2 cores).")
    md += [
        "",
        "**Metrics.** *acc, last evals*: a run's mean accuracy over its last "
        f"{args.window} evals (one eval has a binomial SE of ~2 pts; the window damps it), then mean ± std over "
        "seeds and a 95% Student-t CI. *acc at N rollouts*: each run's eval accuracy interpolated linearly against "
        "`rollouts/generated` at the last evals of the 1x-generation arms (the same window), so grpo_2x is read at "
        "the same generation cost as the others (for 1x arms it equals *acc, last evals*). *acc at T update "
        "tokens*: the same against cumulative `tokens/trained` (completion tokens in the update batches), at the "
        "same relative positions of the smallest final token count of the regime. *replayed / step* and "
        "*replay age*: mean `batch/n_replay` per step, mean `replay/age_mean` over steps that replayed. "
        "*s / step*: median `time/step` over non-eval steps (runs share the cores, so it is indicative only).",
        "",
        f"**Tests.** Welch's unequal-variance t-test over seeds ({P_SOURCE}), on *acc at equal rollouts* unless "
        "stated. Primary comparisons (no ²) get a Holm-Bonferroni correction within each regime; ² marks secondary, "
        "descriptive comparisons.",
        "",
    ]
    for regime, ri in info.items():
        md += [f"## {regime} lr ({ri['lr']}): {REGIME_DESC.get(regime, '')}", "",
               arm_table(runs, regime, ri), "", comparison_table(comps, regime), ""]
    md += ["## Plots", ""]
    for title, name in plots:
        md += [f"**{title}**", "", f"![{title}]({name})", ""]
    md += ["## Reading (generated from the numbers above)", "", reading(runs, comps, info), "",
           "## Lead's notes (edit freely)", "", LEAD_BEGIN, lead, LEAD_END, ""]
    if bad:
        md += ["## Failed or unfinished runs (excluded)", "", "| run | status | why |", "|---|---|---|"]
        for b in bad:
            why = b["why"].replace("|", "\\|").replace("\n", " ⏎ ")[:400]
            md.append(f"| `{b['run']}` | {b['status']} | {why} |")
        md.append("")
    report.write_text("\n".join(md))
    print(f"wrote {report} and {len(plots)} plots in {doc_dir}/", flush=True)
    if bad:
        print(f"note: {len(bad)} failed or unfinished runs are excluded (listed in the report)", flush=True)
    return report


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--steps", type=int, default=60, help="RL steps per run (default 60)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--central-seeds", type=int, default=5, help="seeds for grpo and replay (default 5)")
    p.add_argument("--arms", type=csv, default=list(ARMS), help="comma-separated arms (default: all): " + ",".join(ARMS))
    p.add_argument("--regimes", type=csv, default=list(REGIME_LR), help="comma-separated: low,high (default both)")
    p.add_argument("--lr-low", type=float, default=REGIME_LR["low"])
    p.add_argument("--lr-high", type=float, default=REGIME_LR["high"])
    p.add_argument("--drop-in-high", type=csv, default=list(DEFAULT_DROP_IN_HIGH),
                   help="arms left out of the high-lr regime (default: ratio0.5,unit_group; '' keeps all)")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-size", type=int, default=512)
    p.add_argument("--window", type=int, default=3, help="evals averaged per run (default 3)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    p.add_argument("--out", default=OUT_DEFAULT, help=f"run directory root (default {OUT_DEFAULT})")
    p.add_argument("--doc-dir", default=DOC_DEFAULT, help=f"where the report and plots go (default {DOC_DEFAULT})")
    p.add_argument("--override", action="append", default=[],
                   help="an extra Hydra override for every run (repeatable; changes the experiment)")
    p.add_argument("--analyze-only", action="store_true", help="re-analyse the runs on disk, launch nothing")
    p.add_argument("--dry-run", action="store_true", help="print the runs and the ETA, launch nothing")
    args = p.parse_args(argv)
    for a in args.arms:
        if a not in ARMS:
            p.error(f"unknown arm {a!r}; arms: {', '.join(ARMS)}")
    for r in args.regimes:
        if r not in REGIME_LR:
            p.error(f"unknown regime {r!r}; regimes: low, high")
    args.lr = {"low": args.lr_low, "high": args.lr_high}
    return args


def main(argv: list[str] | None = None) -> None:
    self_check()
    args = parse_args(argv)
    out, doc_dir = Path(args.out), Path(args.doc_dir)
    if not out.is_absolute():
        out = REPO / out
        args.out = str(out)
    if not doc_dir.is_absolute():
        doc_dir = REPO / doc_dir
    if not args.analyze_only:
        rg = Path(sys.executable).parent / "replaygrpo"
        rg_bin = str(rg) if rg.exists() else "replaygrpo"
        jobs = plan(args, rg_bin)
        if args.dry_run:
            for j in jobs:
                print(f"~{j.cost_s:4.0f}s  " + " ".join(shlex.quote(c) for c in j.cmd))
            print(f"{len(jobs)} runs; predicted ~{fmt_min(sum(j.cost_s for j in jobs) / args.jobs)} with --jobs "
                  f"{args.jobs} (model: {STEP_S} s/step x arm cost, {EVAL_S} s/eval, {START_S} s start-up; "
                  "+ the warm-up, ~90 s if the warm start is not cached)")
            return
        todo = pending(args, jobs)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"command": "scripts/toy_sample_efficiency.sh " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                "date": dt.datetime.now().isoformat(timespec="minutes"), "machine": machine(),
                "commit": git_commit(), "jobs": args.jobs, "steps": args.steps, "eval_every": args.eval_every,
                "eval_size": args.eval_size, "seeds": args.seeds, "central_seeds": args.central_seeds,
                "drop_in_high": [a for a in args.drop_in_high if a in args.arms] if "high" in args.regimes else [],
                "lr": args.lr}
        meta_path = out / "experiment.json"
        if meta_path.exists():  # a resumed experiment keeps its first launch date
            meta["date"] = json.loads(meta_path.read_text()).get("date", meta["date"])
        meta_path.write_text(json.dumps(meta, indent=2))
        run_all(args, jobs, todo, rg_bin)
    write_report(args, out, doc_dir)


if __name__ == "__main__":
    main()
