#!/usr/bin/env bash
# Reproduce the paper's grid on a SLURM cluster: model {0.6b, 1.7b, 4b} x method {grpo,
# naive_replay, replay} x seeds, from the presets conf/experiment/paper_<size>_<method>.yaml,
# each run followed by the five-benchmark eval (eval_after_train=true); then the tables.
#
#   scripts/reproduce_paper.sh --dry-run      # list every job and its GPU-hours; launches nothing
#   PARTITION=gpu scripts/reproduce_paper.sh  # submit (needs: pip install -e '.[cluster]')
#   scripts/reproduce_paper.sh hydra.launcher.account=myproj   # extra args go to every multirun
#
# Environment:
#   SEEDS       comma-separated seeds (default 0,1,2)
#   SIZES       model sizes to run (default "0.6b 1.7b 4b")
#   SWEEP_ROOT  where the sweeps go: <SWEEP_ROOT>/<size>/<job>/ (default multirun/paper)
#   PARTITION   SLURM partition (default: the cluster's default); see conf/hydra/launcher/slurm.yaml
#   DRY_RUN=1   same as --dry-run
#   STEPS       steps assumed for the estimate when a preset does not set trainer.steps (default 500)
#   GPUS_0_6B, GPUS_1_7B, GPUS_4B   GPUs (= SLURM tasks, FSDP2 ranks) per job (default 1, 1, 2:
#               float32 weights, gradients and AdamW states take 16 B/param, ~64 GB at 4B)
#
# One `replaygrpo train --multirun hydra/launcher=slurm` per size is started in the
# background: each submits one SLURM array and waits for it, so run this script inside tmux
# or nohup on the login node. Logs: <SWEEP_ROOT>/<size>.launch.log. Run dirs are never
# overwritten: rerunning submits every job again, and the jobs whose dir already holds a
# run stop at once with an error (their earlier results stay). Pass resume=auto to
# continue interrupted runs from their checkpoints.
#
# Estimate per job (wall-clock hours; GPU-hours = hours x the job's GPUs):
#   hours = steps x s/step x method factor / 3600 + eval hours
#   s/step, GRPO, with vLLM on the job's GPUs: 0.6b 30 s, 1.7b 60 s, 4b 120 s (128 prompts x 8
#     completions of up to ~3k tokens: generation dominates and grows with model size);
#   method factor 1.25 for replay and naive_replay (replay_ratio 1 adds as many replayed
#     rollouts as fresh ones to the update, ~half of the step; generation is unchanged);
#   eval after training on one GPU with vLLM (5 benchmarks, 1,517 problems x 4 samples of up
#     to 8,192 tokens): 0.6b 0.5 h, 1.7b 1.0 h, 4b 2.0 h.
# These are planning numbers, not measurements: correct them with your first finished
# run's median time/step (`replaygrpo table <sweep> --by experiment` shows it). The SLURM
# time limit per size is 1.5x its slowest job's estimate.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/_args.sh
parse_args "$@"
SEEDS="${SEEDS:-0,1,2}"
SIZES="${SIZES:-0.6b 1.7b 4b}"
SWEEP_ROOT="${SWEEP_ROOT:-multirun/paper}"
PARTITION="${PARTITION:-}"
STEPS="${STEPS:-500}"
METHODS=(grpo naive_replay replay)
if command -v replaygrpo >/dev/null; then RG=replaygrpo; else RG=.venv/bin/replaygrpo; fi

sec_per_step() { case "$1" in 0.6b) echo 30 ;; 1.7b) echo 60 ;; 4b) echo 120 ;; *) echo "unknown size $1" >&2; exit 2 ;; esac; }
eval_hours() { case "$1" in 0.6b) echo 0.5 ;; 1.7b) echo 1.0 ;; 4b) echo 2.0 ;; esac; }
gpus() { case "$1" in 0.6b) echo "${GPUS_0_6B:-1}" ;; 1.7b) echo "${GPUS_1_7B:-1}" ;; 4b) echo "${GPUS_4B:-2}" ;; esac; }
factor() { [ "$1" = grpo ] && echo 1.0 || echo 1.25; }

# trainer.steps of a preset when it sets it directly, else $STEPS (marked "assumed").
preset_steps() {
  local file="conf/experiment/paper_$1_$2.yaml" steps=""
  [ -f "$file" ] && steps=$(awk '/^trainer:/{t=1; next} /^[^ #]/{t=0} t && $1=="steps:"{print $2; exit}' "$file")
  if [ -n "$steps" ]; then echo "$steps"; else echo "$STEPS assumed"; fi
}

job_hours() {  # size method steps
  awk -v n="$3" -v s="$(sec_per_step "$1")" -v f="$(factor "$2")" -v e="$(eval_hours "$1")" \
    'BEGIN { printf "%.1f", n * s * f / 3600 + e }'
}

IFS=, read -r -a SEED_LIST <<< "$SEEDS"
total=0
declare -A TIMEOUT
for size in $SIZES; do
  slowest=0
  for method in "${METHODS[@]}"; do
    read -r steps note <<< "$(preset_steps "$size" "$method")"
    hours=$(job_hours "$size" "$method" "$steps")
    slowest=$(awk -v a="$slowest" -v b="$hours" 'BEGIN { print (b > a ? b : a) }')
    for seed in "${SEED_LIST[@]}"; do
      printf 'job %-5s %-13s seed=%-3s steps=%-4s%-8s %5s h x %s GPU  %s train experiment=paper_%s_%s seed=%s eval_after_train=true\n' \
        "$size" "$method" "$seed" "$steps" "${note:+ ($note)}" "$hours" "$(gpus "$size")" "$RG" "$size" "$method" "$seed"
      total=$(awk -v a="$total" -v b="$hours" -v g="$(gpus "$size")" 'BEGIN { printf "%.1f", a + b * g }')
    done
  done
  TIMEOUT[$size]=$(awk -v h="$slowest" 'BEGIN { printf "%d", h * 1.5 * 60 + 0.999 }')
done
n_jobs=$(( $(wc -w <<< "$SIZES") * ${#METHODS[@]} * ${#SEED_LIST[@]} ))
echo "total: $n_jobs jobs, ~$total GPU-hours (estimate; see the assumptions at the top of $0)"

launch_args() {  # size -> the array LAUNCH (kept an array so extra args may hold spaces)
  local size="$1" presets
  presets=$(printf "paper_${size}_%s," "${METHODS[@]}")
  LAUNCH=("$RG" train --multirun hydra/launcher=slurm "hydra.launcher.timeout_min=${TIMEOUT[$size]}"
          "hydra.launcher.gpus_per_node=$(gpus "$size")" "hydra.launcher.tasks_per_node=$(gpus "$size")"
          ${PARTITION:+"hydra.launcher.partition=$PARTITION"} "hydra.sweep.dir=$SWEEP_ROOT/$size"
          "experiment=${presets%,}" "seed=$SEEDS" eval_after_train=true ${EXTRA[@]+"${EXTRA[@]}"})
}

if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: would launch (one SLURM array per size, in parallel):"
  for size in $SIZES; do launch_args "$size"; echo "  ${LAUNCH[*]}"; done
  echo "then, per size: $RG table $SWEEP_ROOT/<size> --by experiment --baseline paper_<size>_grpo"
  echo "           and: $RG table $SWEEP_ROOT/<size>/*/ --baseline qwen3_<size>/grpo"
  exit 0
fi

PY="$(dirname "$(command -v "$RG")")/python"
if ! "$PY" -c 'import hydra_plugins.hydra_submitit_launcher' 2>/dev/null; then
  echo "error: hydra-submitit-launcher is not installed for $PY: pip install -e '.[cluster]'" >&2
  exit 2
fi
missing=()
for size in $SIZES; do for method in "${METHODS[@]}"; do
  [ -f "conf/experiment/paper_${size}_${method}.yaml" ] || missing+=("conf/experiment/paper_${size}_${method}.yaml")
done; done
if [ ${#missing[@]} -gt 0 ]; then echo "error: missing presets: ${missing[*]}" >&2; exit 2; fi

mkdir -p "$SWEEP_ROOT"
pids=()
for size in $SIZES; do
  launch_args "$size"
  echo "launching $size: ${LAUNCH[*]} (log: $SWEEP_ROOT/$size.launch.log)"
  "${LAUNCH[@]}" > "$SWEEP_ROOT/$size.launch.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || echo "some jobs failed: see $SWEEP_ROOT/*.launch.log and <job>/.submitit; tables mark them" >&2

for size in $SIZES; do
  out="$SWEEP_ROOT/$size"
  $RG table "$out" --by experiment --baseline "paper_${size}_grpo" | tee "$out/sweep_table.md" || status=1
  # The five-benchmark table: per-benchmark accuracy, AES vs GRPO, seeds as mean ± std.
  $RG table "$out"/*/ --baseline "qwen3_${size}/grpo" | tee "$out/benchmarks.md" || status=1
done
exit "$status"
