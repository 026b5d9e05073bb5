#!/usr/bin/env bash
# GPU check. Two modes, chosen automatically: vLLM (used when `import vllm` works on a CUDA
# machine; --hf forces the other) and HF-only (below).
#
# vLLM mode (scripts/gpu_check_vllm.py): 8 replay-GRPO steps of the same Qwen3-0.6B-shaped
# random model with engine=vllm (sleep mode, sync=inplace), 8 prompts x 8 samples of up to
# 4,096 new tokens (a random model rarely stops: long completions, the memory peaks), through
# the real CLI with the engine and the update instrumented: engine start time, GPU memory
# (torch allocated/reserved and the device's used memory) at engine start, before and after
# sleep and after each sync, in-place sync time, the post-sync gap (sync/logprob_gap) and
# tracking (sync/tracking, sync/probe_shift), generation and update tokens/s, and update MFU
# counting prompt and completion tokens; then, when two GPUs are visible, a two-rank FSDP2
# run of 2 steps (torchrun). A one-page verdict, pass/fail per property, in summary.md.
# NOT YET RUN ON A GPU (docs/reproduction.md): sized from estimates to take under 10 minutes
# on one H100.
#
# HF-only mode: 20 replay-GRPO steps of a Qwen3-0.6B-shaped model (random weights,
# the real Qwen3 tokenizer) in bf16 on one GPU, through the real CLI (`replaygrpo train`),
# then tokens/s for generation and for the update, peak GPU memory and the update's
# model-FLOPs utilisation, written to $OUT. Sized to run in under 8 minutes on an H100.
#
#   scripts/gpu_check.sh                 # GPU: 0.6B shape, bf16, 20 steps, 16 prompts x 8, 256 new tokens
#   scripts/gpu_check.sh --cpu           # CPU smoke test: hidden 64, 2 layers, fp32, 3 steps (a minute or two)
#   scripts/gpu_check.sh --tokenizer DIR --data FILE --steps N --prompts N --max-new-tokens N
#   scripts/gpu_check.sh --model DIR     # a saved model dir instead of the random one (e.g. Qwen3-0.6B-Base)
#   scripts/gpu_check.sh --real-reward   # grade with the math grader (a random model then scores 0: no replay)
#
# Why the reward is a coin flip by default: a random-weight model never writes a correct
# answer, so every advantage would be 0, nothing would enter the buffer and no rollout
# would be replayed. The script runs the CLI in-process (`replaygrpo.cli.main`, what
# `python -m replaygrpo` runs) with GradingPool.grade_many replaced by a seeded
# Bernoulli(0.5) reward, so the buffer fills and the update trains fresh + replayed
# rollouts, as in a real replay run. Everything else is the real training loop.
#
# Inputs, found in this order (the device machine gets only the repository, so carry a copy
# of ../shared/data under ./shared/data, which the tool sends along):
#   tokenizer: --tokenizer DIR, shared/data/qwen3, ../shared/data/qwen3
#   data:      --data FILE, shared/data/train/math_train_7500/train.jsonl, ../shared/data/train/...
#              (MATH train in verl JSONL; its two empty-gold rows are dropped by the loader)
#
# Python: the machine's own python3 (PyTorch 2.11, transformers 5.17 on the lent H100) plus
# the pure-Python wheels it lacks, carried in .whl/ (ignored by git) and installed into
# /tmp/site. Make them once, here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1 \
#       math-verify==0.9.0 latex2sympy2_extended==1.11.0
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # sdist only on PyPI
# typer, rich, sympy, numpy and safetensors are already in that image. With no .whl/ the
# script uses PYTHON (default: .venv/bin/python for --cpu when present, else python3).
#
# Outputs in $OUT (default runs/gpu_check/<mode>): summary.md and summary.json (the numbers),
# metrics.jsonl (per step), train.log, env.txt, nvidia_smi.csv (GPU), check.log (everything).
#
# Numbers (steps after the first, which holds CUDA warm-up and has nothing to replay):
#   generation tokens/s = sum(tokens/generated) / sum(time/generate)
#   update tokens/s     = sum(tokens/trained) / sum(time/update)     (completion tokens, fresh + replayed)
#   update MFU          = 6 * params * tokens/trained / time/update / peak  (peak 989e12: H100 bf16 dense)
# MFU here undercounts the work done: prompt tokens, the recompute of gradient checkpointing
# and attention FLOPs are left out (the usual "model FLOPs" convention).
#
# Environment: TIME_LIMIT (seconds for the training run, default 420 GPU / 600 CPU; then
# SIGTERM: the run checkpoints and stops, and the summary covers the steps done),
# PEAK_TFLOPS (default 989 on CUDA), WORK (scratch dir, default /tmp/replaygrpo_gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

MODE=gpu TOKENIZER="" DATA="" MODEL="" STEPS="" PROMPTS="" MAX_NEW="" REWARD=random FORCE_HF=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --hf) FORCE_HF=1 ;;
    --tokenizer) TOKENIZER="$2"; shift ;;
    --data) DATA="$2"; shift ;;
    --model) MODEL="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    --prompts) PROMPTS="$2"; shift ;;
    --max-new-tokens) MAX_NEW="$2"; shift ;;
    --real-reward) REWARD=real ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# vLLM mode where vLLM imports and a CUDA device is visible (the HF-only mode otherwise).
if [ "$MODE" = gpu ] && [ "$FORCE_HF" = 0 ] && "${PYTHON:-python3}" -c "import vllm, torch; assert torch.cuda.is_available()" \
    >/dev/null 2>&1; then
  MODE=vllm
fi
if [ "$MODE" = vllm ]; then
  SHAPE=0.6b DTYPE=bfloat16 DEVICE=cuda
  STEPS="${STEPS:-8}" PROMPTS="${PROMPTS:-8}" GROUP=8 MAX_NEW="${MAX_NEW:-4096}"
  GEN_BATCH=4096 MICRO=32768 MAX_PROMPT=1024 TIME_LIMIT="${TIME_LIMIT:-420}"
elif [ "$MODE" = gpu ]; then
  SHAPE=0.6b DTYPE=bfloat16 DEVICE=cuda
  STEPS="${STEPS:-20}" PROMPTS="${PROMPTS:-16}" GROUP=8 MAX_NEW="${MAX_NEW:-256}"
  GEN_BATCH=128 MICRO=32768 MAX_PROMPT=1024 TIME_LIMIT="${TIME_LIMIT:-420}"
else
  SHAPE=tiny DTYPE=float32 DEVICE=cpu
  STEPS="${STEPS:-3}" PROMPTS="${PROMPTS:-2}" GROUP=4 MAX_NEW="${MAX_NEW:-16}"
  GEN_BATCH=8 MICRO=1024 MAX_PROMPT=256 TIME_LIMIT="${TIME_LIMIT:-600}"
fi
OUT="${OUT:-$REPO/runs/gpu_check/$MODE}"
WORK="${WORK:-/tmp/replaygrpo_gpu_check}"
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/check.log") 2>&1
echo "== replaygrpo gpu_check ($MODE) $(date -u +%FT%TZ)"

first_dir() { for p in "$@"; do [ -n "$p" ] && [ -e "$p" ] && { echo "$p"; return 0; }; done; return 1; }
TOKENIZER=$(first_dir "$TOKENIZER" shared/data/qwen3 ../shared/data/qwen3) || {
  echo "error: no Qwen3 tokenizer: pass --tokenizer DIR or copy ../shared/data/qwen3 to shared/data/qwen3" >&2; exit 2; }
DATA=$(first_dir "$DATA" shared/data/train/math_train_7500/train.jsonl ../shared/data/train/math_train_7500/train.jsonl) || {
  echo "error: no training data: pass --data FILE or copy ../shared/data/train to shared/data/train" >&2; exit 2; }
TOKENIZER=$(cd "$TOKENIZER" && pwd) DATA="$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")"

# --- Python: the machine's own, plus carried wheels --------------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing .whl/*.whl failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  PY="${PYTHON:-python3}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  if [ -z "${PYTHON:-}" ] && [ "$MODE" = cpu ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="${PYTHON:-python3}"; fi
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" - "$MODE" > "$OUT/env.txt" <<'PY' || { cat "$OUT/env.txt"; echo "error: missing Python packages (see above)" >&2; exit 2; }
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
missing = []
for name in ("torch", "transformers", "hydra", "omegaconf", "antlr4", "math_verify", "latex2sympy2_extended",
             "typer", "rich", "sympy", "numpy", "safetensors", "replaygrpo") + (("vllm",) if sys.argv[1] == "vllm" else ()):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as err:  # noqa: BLE001
        missing.append(name)
        print(f"{name} MISSING ({type(err).__name__}: {err})")
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda {torch.version.cuda} device {p.name} {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
elif sys.argv[1] in ("gpu", "vllm"):
    missing.append("a CUDA device")
    print("torch sees no CUDA device")
sys.exit(1 if missing else 0)
PY
cat "$OUT/env.txt"

# --- the model: Qwen3-0.6B-Base's shape (or tiny), random weights, the real tokenizer --------
if [ -z "$MODEL" ]; then
  MODEL="$WORK/model_${SHAPE}_${DTYPE}"
  "$PY" - "$TOKENIZER" "$MODEL" "$SHAPE" "$DTYPE" "$DEVICE" <<'PY' || { echo "error: building the model failed" >&2; exit 1; }
import json, sys
from pathlib import Path
import torch
from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

tok_dir, out, shape, dtype, device = sys.argv[1:6]
out = Path(out)
if (out / "model.safetensors").exists() and (out / "shape.json").exists():
    print(f"model: reusing {out}")
    sys.exit(0)
# Qwen3-0.6B-Base (shared/data/README.md section 4); the tiny one for the CPU smoke test.
shapes = {
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=128, intermediate_size=3072),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, intermediate_size=128),
}
EOT = 151643  # <|endoftext|>: the Base models' bos, eos and pad
config = Qwen3Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0,
                     tie_word_embeddings=True, rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False,
                     bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT, **shapes[shape])
torch.manual_seed(0)
with torch.device(device):
    model = Qwen3ForCausalLM(config)
model = model.to(getattr(torch, dtype))
model.generation_config = GenerationConfig(bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT)
tok = AutoTokenizer.from_pretrained(tok_dir)
tmp = out.with_name(out.name + ".tmp")
model.save_pretrained(tmp)
tok.save_pretrained(tmp)
params = model.num_parameters()
(tmp / "shape.json").write_text(json.dumps({"shape": shape, "dtype": dtype, "params": params, **shapes[shape]}))
tmp.rename(out)
print(f"model: {shape} shape, {params / 1e6:.1f}M parameters (tied embeddings counted once), {dtype} -> {out}")
PY
fi

# --- 20 replay-GRPO steps through the CLI ------------------------------------------------
RUN="$WORK/run-$MODE-$(date +%s)"
OVERRIDES=(
  "model.name=qwen3_${SHAPE}_random" "model.name_or_path=$MODEL" "model.dtype=$DTYPE" "model.gradient_checkpointing=true"
  data=math_train "data.path=$DATA" data.template=qwen_math "data.max_prompt_tokens=$MAX_PROMPT"
  method=replay replay.tau_max=2 replay.alpha=1.0 replay.replay_ratio=1.0
  "engine=$([ "$MODE" = vllm ] && echo vllm || echo hf)" engine.temperature=1.0 engine.top_p=1.0
  "engine.max_new_tokens=$MAX_NEW" "engine.batch_size=$GEN_BATCH"
  "trainer.steps=$STEPS" "trainer.prompts_per_step=$PROMPTS" "trainer.group_size=$GROUP" trainer.lr=1e-6
  "trainer.micro_batch_tokens=$MICRO" trainer.eval_every=0 trainer.grader_workers="$([ "$REWARD" = real ] && echo 2 || echo 0)"
  loss.clip_low=0.2 loss.clip_high=0.28 loss.agg=token_mean loss.kl_coef=0.0
  "device=$DEVICE" checkpoint.every=0 eval_after_train=false "cache_dir=$WORK/cache" "hydra.run.dir=$RUN"
)
cat > "$WORK/train_wrapper.py" <<'PY'
"""`python -m replaygrpo train ARGS` in-process, with an optional coin-flip reward and the peak memory after."""
import json, os, random, sys
import torch

if os.environ.get("GPU_CHECK_REWARD", "random") == "random":
    from replaygrpo.grading import pool

    _rng = random.Random(0)

    def _coin_flip(self, responses, golds):  # a random model never answers right: see scripts/gpu_check.sh
        return [_rng.random() < 0.5 for _ in responses]

    pool.GradingPool.grade_many = _coin_flip

from replaygrpo.cli import main

sys.argv = ["replaygrpo", "train", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exit_:
    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
finally:
    mem = {}
    if torch.cuda.is_available():
        mem = {"torch_max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
               "torch_max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    with open(os.environ["GPU_CHECK_MEM"], "w") as f:
        json.dump(mem, f)
sys.exit(code)
PY

if [ "$MODE" = vllm ]; then
  # The engine keeps a quarter of the card (the 0.6B's weights and KV cache for 64 x 4k tokens).
  OVERRIDES+=(engine.gpu_memory_utilization=0.25 engine.sleep_mode=true engine.sync=inplace)
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu,power.draw \
    --format=csv,noheader,nounits -lms 1000 > "$OUT/nvidia_smi.csv" 2>/dev/null &
  SMI_PID=$!
  EVENTS="$OUT/events.jsonl"; rm -f "$EVENTS"
  echo "== train (vllm): $STEPS steps, $PROMPTS prompts x $GROUP, up to $MAX_NEW new tokens, limit ${TIME_LIMIT}s"
  START=$(date +%s)
  GPU_CHECK_REWARD="$REWARD" GPU_CHECK_EVENTS="$EVENTS" timeout --signal=TERM --kill-after=60 "$TIME_LIMIT" \
    "$PY" -c 'import os, random, sys
if os.environ["GPU_CHECK_REWARD"] == "random":  # a random model never answers right: see the HF mode
    from replaygrpo.grading import pool
    rng = random.Random(0)
    pool.GradingPool.grade_many = lambda self, responses, golds: [rng.random() < 0.5 for _ in responses]
sys.path.insert(0, "scripts")
import gpu_check_vllm
sys.exit(gpu_check_vllm.main(["run", *sys.argv[1:]]))' "${OVERRIDES[@]}"
  RC=$?
  echo "== train exit code $RC after $(( $(date +%s) - START ))s"
  cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl" 2>/dev/null
  TWO_RC=""
  if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    echo "== two-rank FSDP2 step (torchrun, 2 GPUs, 2 steps)"
    TWO=("${OVERRIDES[@]/hydra.run.dir=*/hydra.run.dir=$RUN-2rank}")
    TWO=("${TWO[@]/trainer.steps=*/trainer.steps=2}")
    timeout --signal=TERM --kill-after=30 150 "$PY" -m torch.distributed.run --nproc_per_node 2 -m replaygrpo train \
      "${TWO[@]}" engine.max_new_tokens=512
    TWO_RC=$?
    echo "== two-rank exit code $TWO_RC"
  fi
  kill "$SMI_PID" 2>/dev/null
  PARAMS=$("$PY" -c 'import json, sys, pathlib, torch
p = pathlib.Path(sys.argv[1])
if (p / "shape.json").exists():
    print(json.loads((p / "shape.json").read_text())["params"])
else:  # a model passed with --model: counted on the meta device
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        print(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p)).num_parameters())' "$MODEL")
  "$PY" scripts/gpu_check_vllm.py summary "$RUN/metrics.jsonl" "$EVENTS" "$OUT" "$PARAMS" "${PEAK_TFLOPS:-989}" "$TWO_RC"
  exit $?
fi

SMI_PID=""
if [ "$MODE" = gpu ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu,power.draw --format=csv,noheader,nounits -lms 1000 \
    > "$OUT/nvidia_smi.csv" 2>/dev/null &
  SMI_PID=$!
fi
echo "== train: $STEPS steps, $PROMPTS prompts x $GROUP, $MAX_NEW new tokens, reward=$REWARD, limit ${TIME_LIMIT}s"
echo "   $PY $WORK/train_wrapper.py ${OVERRIDES[*]}"
START=$(date +%s)
GPU_CHECK_REWARD="$REWARD" GPU_CHECK_MEM="$WORK/mem.json" \
  timeout --signal=TERM --kill-after=60 "$TIME_LIMIT" "$PY" "$WORK/train_wrapper.py" "${OVERRIDES[@]}"
RC=$?
WALL=$(( $(date +%s) - START ))
[ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null
echo "== train exit code $RC after ${WALL}s (124: stopped at TIME_LIMIT; the summary covers the steps done)"
cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl" 2>/dev/null
cp "$RUN"/*.log "$OUT/train.log" 2>/dev/null

# --- the numbers -------------------------------------------------------------------------
"$PY" - "$RUN/metrics.jsonl" "$MODEL" "$WORK/mem.json" "$OUT" "$MODE" "$RC" "$WALL" "${PEAK_TFLOPS:-}" <<'PY'
import csv, json, statistics, sys
from pathlib import Path

metrics, model_dir, mem_path, out, mode, rc, wall, peak_arg = sys.argv[1:9]
rows = [json.loads(x) for x in Path(metrics).read_text().splitlines() if x.strip()] if Path(metrics).exists() else []
shape_file = Path(model_dir) / "shape.json"
if shape_file.exists():
    params = json.loads(shape_file.read_text())["params"]
else:  # a model passed with --model: count its parameters on the meta device (no memory)
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch
    with torch.device("meta"):
        params = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).num_parameters()
mem = json.loads(Path(mem_path).read_text()) if Path(mem_path).exists() else {}
smi = Path(out) / "nvidia_smi.csv"
if smi.exists():
    used = [float(r[1]) for r in csv.reader(smi.open()) if len(r) > 2 and r[1].strip().replace(".", "").isdigit()]
    if used:
        mem["nvidia_smi_max_used_gib"] = max(used) / 1024
peak = float(peak_arg) * 1e12 if peak_arg else (989e12 if mode == "gpu" else None)
timed = rows[1:] if len(rows) > 1 else rows  # step 1: warm-up, empty buffer
s = lambda k: sum(r[k] for r in timed)
summary = {
    "mode": mode, "train_exit_code": int(rc), "wall_s": int(wall), "steps_done": len(rows), "steps_timed": len(timed),
    "params": params, "peak_flops": peak,
}
if timed:
    gen_tok, gen_t, upd_tok, upd_t = s("tokens/generated"), s("time/generate"), s("tokens/trained"), s("time/update")
    summary.update({
        "generation_tokens_per_s": gen_tok / gen_t if gen_t else None,
        "update_tokens_per_s": upd_tok / upd_t if upd_t else None,
        "update_mfu": 6 * params * upd_tok / upd_t / peak if upd_t and peak else None,
        "median_s": {k: statistics.median(r[f"time/{k}"] for r in timed) for k in ("step", "generate", "grade", "update", "sync")},
        "tokens_generated_per_step": gen_tok / len(timed), "tokens_trained_per_step": upd_tok / len(timed),
        "replayed_rollouts_total": sum(r["batch/n_replay"] for r in rows),
        "fresh_rollouts_per_step": statistics.median(r["batch/n_fresh"] for r in timed),
        "buffer_size_last": rows[-1]["buffer/size"], "replay_age_max": max(r["replay/age_max"] for r in rows),
        "truncated_frac_mean": statistics.mean(r["response/truncated_frac"] for r in timed),
        "skipped_steps": rows[-1].get("loss/skipped_total", 0),
    })
summary["memory"] = mem
(Path(out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
lines = [f"# replaygrpo gpu_check ({mode})", "",
         f"{summary['steps_done']} steps done (train exit code {rc}, {wall} s); numbers over the {summary['steps_timed']} after the first.",
         f"Model: {params / 1e6:.1f}M parameters. Reward: see check.log (coin flip unless --real-reward).", "",
         "| quantity | value |", "|---|---|"]
if timed:
    m = summary["median_s"]
    lines += [
        f"| generation tokens/s | {fmt(summary['generation_tokens_per_s'], ',.0f')} |",
        f"| update tokens/s (completion tokens, fresh + replayed) | {fmt(summary['update_tokens_per_s'], ',.0f')} |",
        f"| update MFU (6 N tokens / time / {fmt(peak and peak / 1e12, '.0f')} TFLOP/s) | {fmt(summary['update_mfu'] and 100 * summary['update_mfu'], '.1f')} % |",
        f"| median s/step: total / generate / grade / update / sync | {m['step']:.2f} / {m['generate']:.2f} / {m['grade']:.2f} / {m['update']:.2f} / {m['sync']:.2f} |",
        f"| tokens per step: generated / trained | {summary['tokens_generated_per_step']:,.0f} / {summary['tokens_trained_per_step']:,.0f} |",
        f"| rollouts replayed (all steps) / buffer at end / max age | {summary['replayed_rollouts_total']} / {summary['buffer_size_last']} / {summary['replay_age_max']} |",
        f"| responses cut at max_new_tokens | {100 * summary['truncated_frac_mean']:.0f} % |",
        f"| skipped (non-finite) steps | {summary['skipped_steps']} |",
    ]
for k, v in mem.items():
    lines.append(f"| peak GPU memory, {k.replace('_gib', '')} | {v:.1f} GiB |")
text = "\n".join(lines) + "\n"
(Path(out) / "summary.md").write_text(text)
print(text)
if not timed:
    print("no step finished: see check.log and train.log")
    sys.exit(1)
PY
SUMMARY_RC=$?
[ "$RC" = 0 ] || [ "$RC" = 124 ] || exit "$RC"
exit "$SUMMARY_RC"
