"""`make bench`: replaygrpo against TRL, replay's cost, the buffer, the step breakdown, log-prob memory.

Every figure is a ratio against a baseline measured in this same invocation, on this
machine, with its core count and load average printed beside it; per-step times are
medians after warm-up, and the runs being compared are interleaved (A, B, B, A, ...)
so drift in the load hits both. Writes docs/results/bench.md.

1. Peer: TRL's GRPOTrainer (scripts/bench_trl.py) and `replaygrpo train method=grpo`
   on the same model directory, prompts (same order), G=8 x 8 prompts, 24 new tokens,
   temperature 1, lr 1e-4, one optimiser step per generation batch, no KL, token-mean
   loss, float32: at the toy model and at a 31.5M-parameter Qwen3 shape (random init).
2. Replay's cost: `method=replay` vs `method=grpo` (scripts/bench_replay_cost.py).
3. Buffer: scripts/bench_buffer.py (100k rollouts of 1,000 tokens).
4. Step time breakdown of the toy lab (from the replaygrpo runs of 1. and 2.).
5. Peak memory of the chunked log-prob paths at vocab 151,936 (scripts/bench_logprobs_memory.py).
6. Distance to the limit (scripts/bench_limits.py): the update against one plain forward +
   backward of the same tokens, generation against plain decoding of the same tokens.

    .venv/bin/python scripts/bench.py [--quick] [--repeats 2] [--only peer,replay,buffer,memory,limits] [--out docs/results/bench.md]

Needs trl (`pip install "trl>=1.16,<2"`, the `bench` extra) for 1; without it 1 is skipped.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_limits import SIZES as MODELS  # noqa: E402  (the model overrides of each size, defined once)
from bench_replay_cost import PEER, measure, other, report, run_train  # noqa: E402
from bench_report import fmt_ms, render  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SIZES = {
    "toy": MODELS["toy"],
    # Random init earns no reward, so every advantage is 0: without the last key the update
    # would skip every row and the row would compare nothing.
    "31.5M": [*MODELS["31.5M"], "trainer.skip_zero_advantage=false"],
}


def med(xs) -> float:
    return float(statistics.median(list(xs)))


def version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    import torch

    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "cpu": model,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": version("torch"), "transformers": version("transformers"), "trl": version("trl")}


def load() -> float:
    return os.getloadavg()[0]


def trained_model_dir(overrides: list[str]) -> Path:
    """The directory replaygrpo trains from for these overrides (a shipped base, or the `toy` warm start,
    built and cached if absent): TRL is handed the same one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from replaygrpo.config import register_configs
    from replaygrpo.toymodel import resolve_toy
    from replaygrpo.validation import to_config

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = to_config(compose("config", overrides=[*overrides, f"cache_dir={REPO / '.cache'}"]))
    return (REPO / resolve_toy(cfg)[0]).resolve()


def run_trl(model_dir: Path, steps: int, out: Path) -> dict:
    cmd = [PY, str(REPO / "scripts" / "bench_trl.py"), "--model-dir", str(model_dir), "--steps", str(steps),
           "--prompts", "8", "--group", "8", "--max-new-tokens", "24", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def peer(size: str, steps: int, warmup: int, repeats: int, work: Path) -> dict:
    """replaygrpo and TRL, interleaved; per-step medians after warm-up and the ratio per repeat."""
    path = trained_model_dir(SIZES[size])
    rg_rows: list[list[dict]] = []
    trl_runs: list[dict] = []
    for rep in range(repeats):
        for who in ("rg", "trl") if rep % 2 == 0 else ("trl", "rg"):
            if who == "rg":
                rows = run_train(["method=grpo", *PEER, *SIZES[size]], steps, work, f"peer-{size}-{rep}")
                rg_rows.append(rows[warmup:-1])  # the last step includes the final toy eval
            else:
                r = run_trl(path, steps, work / f"trl-{size}-{rep}.json")
                trl_runs.append({"steps": r["steps"][warmup:], "tokens": r["tokens_generated"][warmup:],
                                 "params": r["params"], "trl_version": r["trl_version"]})
    rg_step = [med(r["time/step"] for r in rows) for rows in rg_rows]
    trl_step = [med(s["step"] for s in run["steps"]) for run in trl_runs]
    rg_all = [r for rows in rg_rows for r in rows]
    trl_all = [s for run in trl_runs for s in run["steps"]]
    rg_tok = med(r["tokens/generated"] for r in rg_all)
    trl_tok = med(t for run in trl_runs for t in run["tokens"])
    rg_s, trl_s = med(r["time/step"] for r in rg_all), med(s["step"] for s in trl_all)
    return {
        "size": size, "model_dir": str(path), "params": trl_runs[0]["params"], "steps": steps,
        "warmup": warmup, "repeats": repeats,
        "rg_s": rg_s, "trl_s": trl_s, "ratio": trl_s / rg_s,
        "ratio_per_repeat": [t / r for t, r in zip(trl_step, rg_step)],
        "ratio_per_token": (trl_s / trl_tok) / (rg_s / rg_tok),
        "rg_tokens": rg_tok, "trl_tokens": trl_tok,
        "reward": med(r["reward/mean"] for r in rg_all), "zero_adv": med(r["batch/zero_adv_frac"] for r in rg_all),
        "truncated": med(r["response/truncated_frac"] for r in rg_all),
        "rg_parts": {k: med(r[f"time/{k}"] for r in rg_all) for k in ("generate", "grade", "update", "sync")}
        | {"other": med(map(other, rg_all))},
        "rg_share": {k: sum(r[f"time/{k}"] for r in rg_all) / sum(r["time/step"] for r in rg_all)
                     for k in ("generate", "grade", "update", "sync")}
        | {"other": sum(map(other, rg_all)) / sum(r["time/step"] for r in rg_all)},
        "trl_parts": {k: med(s[k] for s in trl_all) for k in trl_all[0] if k != "step"},
        "trl_share": {k: sum(s[k] for s in trl_all) / sum(s["step"] for s in trl_all) for k in trl_all[0]
                      if k != "step"},
        "load": load(),
    }


def buffer_bench(quick: bool) -> dict:
    cmd = [PY, str(REPO / "scripts" / "bench_buffer.py"), "--steps", "5" if quick else "60"]
    if quick:
        cmd += ["--size", "20000"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_buffer failed:\n{proc.stderr[-3000:]}")
    text = proc.stdout
    step = re.search(r"step \(add .*?\): median ([\d.]+) ms", text)
    bpt = re.search(r"bytes per stored completion token: ([\d.]+)", text)
    size = re.search(r"buffer: ([\d,]+) rollouts", text)
    return {"cmd": " ".join(["python", *cmd[1:]]).replace(str(REPO) + "/", ""), "stdout": text.strip(),
            "step_ms": float(step.group(1)), "bytes_per_token": float(bpt.group(1)),
            "rollouts": int(size.group(1).replace(",", ""))}


def memory_bench(quick: bool) -> dict:
    args = ["--tokens", "256", "--hidden", "256", "--chunk", "64"] if quick else ["--tokens", "2048", "--hidden", "1024"]
    out = Path(tempfile.mkdtemp(prefix="bench_mem_")) / "mem.json"
    cmd = [PY, str(REPO / "scripts" / "bench_logprobs_memory.py"), *args, "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_logprobs_memory failed:\n{proc.stderr[-3000:]}")
    r = json.loads(out.read_text())
    r["stdout"] = proc.stdout.strip()
    r["cmd"] = "python scripts/bench_logprobs_memory.py " + " ".join(args)
    return r


def limits_bench(quick: bool) -> list[dict]:
    """scripts/bench_limits.py at each size, in a subprocess each (a fresh process per model)."""
    out = []
    for size in SIZES:
        path = Path(tempfile.mkdtemp(prefix="bench_limits_")) / "limits.json"
        cmd = [PY, str(REPO / "scripts" / "bench_limits.py"), "--size", size, "--reps", "3" if quick else "7",
               "--json", str(path)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"bench_limits failed:\n{proc.stderr[-3000:]}")
        r = json.loads(path.read_text())
        r["stdout"] = proc.stdout.strip()
        r["cmd"] = "python scripts/bench_limits.py " + " ".join(cmd[2:-2])
        out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke sizes (seconds per part), not the figures")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved repeats per side in the peer runs (default: 4 at each size)")
    ap.add_argument("--replay-repeats", type=int, default=3, help="interleaved repeats per method in the replay runs")
    ap.add_argument("--only", default="peer,replay,buffer,memory,limits")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "bench.md"))
    ap.add_argument("--json", default=str(REPO / "docs" / "results" / "bench.json"),
                    help="also write every measurement as JSON here (re-render with --from-json)")
    ap.add_argument("--from-json", default=None, help="re-render --out from a --json of an earlier run; run nothing")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        info = saved["machine"]
        wall = info.get("wall", sum(info.get("took", {}).values()))
        Path(args.out).write_text(render(info, saved["results"], wall, saved.get("quick", False)) + "\n")
        print(f"wrote {args.out} from {args.from_json}")
        return
    parts = set(args.only.split(","))
    t_start = time.perf_counter()
    info = machine() | {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "load_start": load()}
    print(f"cores: {info['cores']} ({info['usable_cores']} usable), torch threads {info['torch_threads']}, "
          f"{info['cpu']}, load average {info['load_start']:.1f}; torch {info['torch']}, "
          f"transformers {info['transformers']}, trl {info['trl']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_"))
    res: dict = {}
    steps = {"toy": (10, 2) if args.quick else (40, 5), "31.5M": (4, 1) if args.quick else (8, 2)}
    took: dict[str, float] = {}
    if "peer" in parts:
        if info["trl"] == "not installed":
            print("trl is not installed: skipping the peer comparison (pip install 'trl>=1.16,<2')", flush=True)
        else:
            res["peer"] = []
            for size in SIZES:
                n, w = steps[size]
                t0 = time.perf_counter()
                reps = args.repeats or 4  # enough that the spread of the per-repeat ratios is worth stating
                p = peer(size, n, w, 1 if args.quick else reps, work)
                took[f"peer {size}"] = time.perf_counter() - t0
                res["peer"].append(p)
                print(f"[peer {size}, {p['params'] / 1e6:.2f}M params] replaygrpo {fmt_ms(p['rg_s'])}/step, "
                      f"TRL {fmt_ms(p['trl_s'])}/step -> {p['ratio']:.2f}x (per repeat "
                      f"{', '.join(f'{x:.2f}' for x in p['ratio_per_repeat'])}); generated tokens/step "
                      f"{p['rg_tokens']:.0f} vs {p['trl_tokens']:.0f}; load {p['load']:.1f}", flush=True)
    if "replay" in parts:
        n, w = (10, 3) if args.quick else (50, 5)
        t0 = time.perf_counter()
        r = measure(n, args.replay_repeats, w, PEER, 4 if args.quick else 20)
        took["replay"] = time.perf_counter() - t0
        res["replay"] = r
        print("[replay cost]\n" + report(r), flush=True)
    if "peer" in res or "replay" in res:
        res["breakdown"] = {}
        if "peer" in res:
            p = res["peer"][0]
            res["breakdown"]["grpo (section 1 runs)"] = {"step": p["rg_s"], "parts": p["rg_parts"],
                                                        "share": p["rg_share"]}
        if "replay" in res:
            for name in ("grpo", "replay"):
                b = res["replay"][f"{name}_breakdown"]
                res["breakdown"][f"{name} (section 2 runs)"] = b
        for name, b in res["breakdown"].items():
            print(f"[breakdown {name}] step {fmt_ms(b['step'])}: " + ", ".join(
                f"{k} {100 * b['share'][k]:.1f}%" for k in ("generate", "grade", "update", "sync", "other")),
                flush=True)
    if "buffer" in parts:
        t0 = time.perf_counter()
        res["buffer"] = buffer_bench(args.quick)
        took["buffer"] = time.perf_counter() - t0
        print(f"[buffer] {res['buffer']['step_ms']:.2f} ms/step at {res['buffer']['rollouts']:,} rollouts, "
              f"{res['buffer']['bytes_per_token']:.2f} bytes/token", flush=True)
    if "memory" in parts:
        t0 = time.perf_counter()
        res["memory"] = memory_bench(args.quick)
        took["memory"] = time.perf_counter() - t0
        print("[memory]\n" + res["memory"]["stdout"], flush=True)
    if "limits" in parts:
        t0 = time.perf_counter()
        res["limits"] = limits_bench(args.quick)
        took["limits"] = time.perf_counter() - t0
        for r in res["limits"]:
            print("[limits] " + r["stdout"], flush=True)
    info["load_end"] = load()
    info["took"] = took
    info["wall"] = time.perf_counter() - t_start
    wall = time.perf_counter() - t_start
    text = render(info, res, wall, args.quick)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": res, "quick": args.quick}, indent=2,
                                              default=str))
    print(f"wrote {args.out} in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
