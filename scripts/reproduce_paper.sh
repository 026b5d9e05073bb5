#!/usr/bin/env bash
# Reproduce the paper's grid on a SLURM cluster, in two stages:
#   pilot: Qwen3-0.6B-Base x {grpo, replay} x two learning rates (PILOT_LRS) x one seed, PILOT_STEPS
#          steps, no benchmark eval: does training learn (held-out MATH500 accuracy in training)?
#   grid:  model {0.6b, 1.7b, 4b} x arm x seeds, each run followed by the five-benchmark eval, then
#          the tables. It starts only if scripts/pilot_gate.py passes the pilot (FORCE=1 skips the
#          gate), and 0.6B trains at the learning rate the pilot kept.
# Arms: grpo; grpo_mb (4 clipped mini-batch steps per rollout batch, trainer.mini_batches=4:
# the GRPO most papers run); grpo_compute (GRPO given replay's GPU-hours: steps x 1.25, the
# replay factor below; read it at equal GPU-hours on its in-training curve); naive_replay; replay.
#
#   scripts/reproduce_paper.sh --dry-run               # both stages' jobs and GPU-hours; launches nothing
#   PARTITION=gpu scripts/reproduce_paper.sh           # STAGE=pilot (default): submit the pilot
#   STAGE=grid PARTITION=gpu scripts/reproduce_paper.sh  # the gate, then the grid
#   scripts/reproduce_paper.sh hydra.launcher.account=myproj   # extra args go to every multirun
#
# Environment:
#   STAGE       pilot (default) or grid
#   SEEDS       comma-separated seeds of the grid (default 0,1,2)
#   SIZES       model sizes of the grid (default "0.6b 1.7b 4b")
#   SWEEP_ROOT  where the sweeps go: <SWEEP_ROOT>/pilot/, <SWEEP_ROOT>/<size>[-<arm>]/ (default multirun/paper)
#   PARTITION   SLURM partition (default: the cluster's default); see conf/hydra/launcher/slurm.yaml
#   PILOT_STEPS steps of a pilot job (default 100); PILOT_LRS (default 1e-6,2.5e-6: the recipe's
#               rate and the 0.6B preset's, docs/reproduction.md "Learning rate per size")
#   FORCE=1     start the grid without the gate (0.6B then trains at its preset's rate)
#   DRY_RUN=1   same as --dry-run
#   STEPS       steps assumed for the estimate when a preset does not set trainer.steps (default 500)
#   GPUS_0_6B, GPUS_1_7B, GPUS_4B   GPUs (= SLURM tasks, FSDP2 ranks) per job (default 1, 1, 2:
#               float32 weights, gradients and AdamW states take 16 B/param, ~64 GB at 4B)
#
# Per size, one `replaygrpo train --multirun hydra/launcher=slurm` per arm group is started in the
# background: each submits one SLURM array and waits for it, so run this script inside tmux or
# nohup on the login node. Sweep dirs: <SWEEP_ROOT>/<size>/ (grpo, naive_replay, replay), <SWEEP_ROOT>/<size>-grpo_mb/,
# <SWEEP_ROOT>/<size>-grpo_compute/. Logs: <SWEEP_ROOT>/<size>.<group>.launch.log. Run dirs are never
# overwritten: rerunning submits every job again, and the jobs whose dir already holds a run stop
# at once with an error (their earlier results stay). Pass resume=auto to continue interrupted
# runs from their checkpoints.
#
# Estimate per job (wall-clock hours; GPU-hours = hours x the job's GPUs):
#   hours = steps x s/step x arm factor / 3600 + in-training evals x eval minutes / 60 + eval hours
#   s/step, GRPO, with vLLM on the job's GPUs: 0.6b 30 s, 1.7b 60 s, 4b 120 s (128 prompts x 8
#     completions of up to ~3k tokens: generation dominates and grows with model size);
#   arm factor 1.25 for replay and naive_replay (replay_ratio 1 adds as many replayed rollouts as
#     fresh ones to the update, ~half of the step; generation is unchanged); 1.1 for grpo_mb (one
#     extra no-grad forward to fix pi_old before the first of its 4 steps);
#   in-training eval (trainer.eval_every 50, 250 MATH500 problems, greedy): 0.6b 1, 1.7b 2, 4b 4 min each;
#   eval after training on one GPU with vLLM (5 benchmarks, 1,517 problems x 4 samples of up
#     to 8,192 tokens): 0.6b 0.5 h, 1.7b 1.0 h, 4b 2.0 h (none in the pilot).
# These are planning numbers, not measurements: correct them with the pilot's median time/step
# (`replaygrpo table <SWEEP_ROOT>/pilot --by experiment` shows it). The SLURM time limit per
# size is 1.5x its slowest job's estimate.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/_args.sh
parse_args "$@"
STAGE="${STAGE:-pilot}"
SEEDS="${SEEDS:-0,1,2}"
SIZES="${SIZES:-0.6b 1.7b 4b}"
SWEEP_ROOT="${SWEEP_ROOT:-multirun/paper}"
PARTITION="${PARTITION:-}"
STEPS="${STEPS:-500}"
PILOT_STEPS="${PILOT_STEPS:-100}"
PILOT_LRS="${PILOT_LRS:-1e-6,2.5e-6}"
FORCE="${FORCE:-0}"
ARMS=(grpo grpo_mb grpo_compute naive_replay replay)
case "$STAGE" in pilot|grid) ;; *) echo "error: STAGE must be pilot or grid, not '$STAGE'" >&2; exit 2 ;; esac

sec_per_step() { case "$1" in 0.6b) echo 30 ;; 1.7b) echo 60 ;; 4b) echo 120 ;; *) echo "unknown size $1" >&2; exit 2 ;; esac; }
eval_hours() { case "$1" in 0.6b) echo 0.5 ;; 1.7b) echo 1.0 ;; 4b) echo 2.0 ;; esac; }
heldout_minutes() { case "$1" in 0.6b) echo 1 ;; 1.7b) echo 2 ;; 4b) echo 4 ;; esac; }
gpus() { case "$1" in 0.6b) echo "${GPUS_0_6B:-1}" ;; 1.7b) echo "${GPUS_1_7B:-1}" ;; 4b) echo "${GPUS_4B:-2}" ;; esac; }
factor() { case "$1" in grpo|grpo_compute) echo 1.0 ;; grpo_mb) echo 1.1 ;; *) echo 1.25 ;; esac; }
preset_of() { case "$1" in grpo*) echo grpo ;; *) echo "$1" ;; esac; }

# trainer.steps of a preset when it sets it directly, else $STEPS (marked "assumed").
preset_steps() {
  local file="conf/experiment/paper_$1_$2.yaml" steps=""
  [ -f "$file" ] && steps=$(awk '/^trainer:/{t=1; next} /^[^ #]/{t=0} t && $1=="steps:"{print $2; exit}' "$file")
  if [ -n "$steps" ]; then echo "$steps"; else echo "$STEPS assumed"; fi
}
# The overrides that make an arm out of its preset (steps: the preset's).
arm_overrides() {  # arm steps
  case "$1" in
    grpo_mb) echo "trainer.mini_batches=4" ;;
    grpo_compute) echo "trainer.steps=$(awk -v n="$2" -v f="$(factor replay)" 'BEGIN { printf "%d", n * f }')" ;;
    *) echo "" ;;
  esac
}
arm_steps() {  # arm steps -> the steps the arm trains
  if [ "$1" = grpo_compute ]; then awk -v n="$2" -v f="$(factor replay)" 'BEGIN { printf "%d", n * f }'; else echo "$2"; fi
}
job_hours() {  # size arm steps with_eval(0/1)
  awk -v n="$3" -v s="$(sec_per_step "$1")" -v f="$(factor "$2")" -v m="$(heldout_minutes "$1")" \
      -v e="$(eval_hours "$1")" -v we="$4" \
    'BEGIN { printf "%.1f", n * s * f / 3600 + (int(n / 50) + 1) * m / 60 + we * e }'
}

total=0
n_jobs=0
declare -A TIMEOUT
echo "stage pilot:"
IFS=, read -r -a PILOT_LR_LIST <<< "$PILOT_LRS"
pilot_slowest=0
for lr in "${PILOT_LR_LIST[@]}"; do
  for method in grpo replay; do
    hours=$(job_hours 0.6b "$method" "$PILOT_STEPS" 0)
    pilot_slowest=$(awk -v a="$pilot_slowest" -v b="$hours" 'BEGIN { print (b > a ? b : a) }')
    printf 'job pilot 0.6b %-13s lr=%-7s steps=%-4s %5s h x %s GPU  %s train experiment=paper_0.6b_%s trainer.lr=%s trainer.steps=%s eval_after_train=false\n' \
      "$method" "$lr" "$PILOT_STEPS" "$hours" "$(gpus 0.6b)" "$RG" "$method" "$lr" "$PILOT_STEPS"
    total=$(awk -v a="$total" -v b="$hours" -v g="$(gpus 0.6b)" 'BEGIN { printf "%.1f", a + b * g }')
    n_jobs=$((n_jobs + 1))
  done
done
TIMEOUT[pilot]=$(awk -v h="$pilot_slowest" 'BEGIN { printf "%d", h * 1.5 * 60 + 0.999 }')
echo "pilot: $n_jobs jobs, ~$total GPU-hours"

echo "stage grid:"
IFS=, read -r -a SEED_LIST <<< "$SEEDS"
grid_total=0
grid_jobs=0
for size in $SIZES; do
  slowest=0
  for arm in "${ARMS[@]}"; do
    read -r steps note <<< "$(preset_steps "$size" "$(preset_of "$arm")")"
    n=$(arm_steps "$arm" "$steps")
    hours=$(job_hours "$size" "$arm" "$n" 1)
    slowest=$(awk -v a="$slowest" -v b="$hours" 'BEGIN { print (b > a ? b : a) }')
    for seed in "${SEED_LIST[@]}"; do
      over=$(arm_overrides "$arm" "$steps")
      printf 'job grid  %-5s %-13s seed=%-3s steps=%-4s%-8s %5s h x %s GPU  %s train experiment=paper_%s_%s%s seed=%s eval_after_train=true\n' \
        "$size" "$arm" "$seed" "$n" "${note:+ ($note)}" "$hours" "$(gpus "$size")" "$RG" "$size" \
        "$(preset_of "$arm")" "${over:+ $over}" "$seed"
      grid_total=$(awk -v a="$grid_total" -v b="$hours" -v g="$(gpus "$size")" 'BEGIN { printf "%.1f", a + b * g }')
      grid_jobs=$((grid_jobs + 1))
    done
  done
  TIMEOUT[$size]=$(awk -v h="$slowest" 'BEGIN { printf "%d", h * 1.5 * 60 + 0.999 }')
done
echo "grid: $grid_jobs jobs, ~$grid_total GPU-hours"
echo "total: $((n_jobs + grid_jobs)) jobs, ~$(awk -v a="$total" -v b="$grid_total" 'BEGIN { printf "%.1f", a + b }') GPU-hours (estimate; see the assumptions at the top of $0)"

launcher() {  # size timeout-key -> the SLURM launcher overrides
  LAUNCHER=(hydra/launcher=slurm "hydra.launcher.timeout_min=${TIMEOUT[$2]}" "hydra.launcher.gpus_per_node=$(gpus "$1")"
            "hydra.launcher.tasks_per_node=$(gpus "$1")" ${PARTITION:+"hydra.launcher.partition=$PARTITION"})
}
sweep_dir() {  # size group: the main arms share <size>/, each extra GRPO arm has its own dir
  if [ "$2" = main ]; then echo "$SWEEP_ROOT/$1"; else echo "$SWEEP_ROOT/$1-$2"; fi
}
# The multiruns of a stage: LAUNCHES holds "name command" per entry (words quoted as %q), SHOWN the same unquoted.
plan_stage() {
  LAUNCHES=() SHOWN=()
  local size group steps cmd
  if [ "$1" = pilot ]; then
    launcher 0.6b pilot
    cmd=("$RG" train --multirun "${LAUNCHER[@]}" "hydra.sweep.dir=$SWEEP_ROOT/pilot" "experiment=paper_0.6b_grpo,paper_0.6b_replay"
         "trainer.lr=$PILOT_LRS" "trainer.steps=$PILOT_STEPS" seed=0 eval_after_train=false ${EXTRA[@]+"${EXTRA[@]}"})
    LAUNCHES+=("pilot $(printf '%q ' "${cmd[@]}")") SHOWN+=("${cmd[*]}")
    return
  fi
  for size in $SIZES; do
    launcher "$size" "$size"
    read -r steps _ <<< "$(preset_steps "$size" grpo)"
    local lr=()
    [ "$size" = 0.6b ] && [ -n "${LR_0_6B:-}" ] && lr=("trainer.lr=$LR_0_6B")
    for group in main grpo_mb grpo_compute; do
      case "$group" in
        main) cmd=("experiment=paper_${size}_grpo,paper_${size}_naive_replay,paper_${size}_replay") ;;
        *) cmd=("experiment=paper_${size}_grpo" $(arm_overrides "$group" "$steps")) ;;
      esac
      cmd=("$RG" train --multirun "${LAUNCHER[@]}" "hydra.sweep.dir=$(sweep_dir "$size" "$group")" "${cmd[@]}" ${lr[@]+"${lr[@]}"}
           "seed=$SEEDS" eval_after_train=true ${EXTRA[@]+"${EXTRA[@]}"})
      LAUNCHES+=("$size.$group $(printf '%q ' "${cmd[@]}")") SHOWN+=("${cmd[*]}")
    done
  done
}

if [ "$DRY_RUN" = 1 ]; then
  for stage in pilot grid; do
    LR_0_6B="<the pilot's lr>"
    plan_stage "$stage"
    echo "dry run, stage $stage: would launch (one SLURM array each, in parallel):"
    for line in "${SHOWN[@]}"; do echo "  $line"; done
  done
  echo "the grid starts only after: python scripts/pilot_gate.py $SWEEP_ROOT/pilot --lrs $PILOT_LRS"
  echo "then, per size: $RG table $SWEEP_ROOT/<size> --by experiment"
  echo "           and: $RG table $SWEEP_ROOT/<size>/*/ $SWEEP_ROOT/<size>-grpo_mb/*/ $SWEEP_ROOT/<size>-grpo_compute/*/ --baseline <a grpo run dir of $SWEEP_ROOT/<size>>"
  exit 0
fi

PY="$(dirname "$(command -v "$RG")")/python"
if ! "$PY" -c 'import hydra_plugins.hydra_submitit_launcher' 2>/dev/null; then
  echo "error: hydra-submitit-launcher is not installed for $PY: pip install -e '.[cluster]'" >&2
  exit 2
fi
missing=()
for size in $SIZES; do for method in grpo naive_replay replay; do
  [ -f "conf/experiment/paper_${size}_${method}.yaml" ] || missing+=("conf/experiment/paper_${size}_${method}.yaml")
done; done
if [ ${#missing[@]} -gt 0 ]; then echo "error: missing presets: ${missing[*]}" >&2; exit 2; fi

if [ "$STAGE" = grid ] && [ "$FORCE" != 1 ]; then
  echo "the gate: the pilot in $SWEEP_ROOT/pilot"
  if ! gate=$("$PY" scripts/pilot_gate.py "$SWEEP_ROOT/pilot" --lrs "$PILOT_LRS"); then
    echo "error: the pilot does not pass the gate (above); fix it, or FORCE=1 to start the grid anyway" >&2
    exit 2
  fi
  echo "$gate"
  LR_0_6B="${gate##*lr=}"
  echo "0.6B trains at lr $LR_0_6B (the pilot's choice)"
fi

mkdir -p "$SWEEP_ROOT"
plan_stage "$STAGE"
pids=()
for line in "${LAUNCHES[@]}"; do
  name="${line%% *}"
  echo "launching $name: ${line#* } (log: $SWEEP_ROOT/$name.launch.log)"
  eval "${line#* }" > "$SWEEP_ROOT/$name.launch.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || echo "some jobs failed: see $SWEEP_ROOT/*.launch.log and <job>/.submitit; tables mark them" >&2

if [ "$STAGE" = pilot ]; then
  "$PY" scripts/pilot_gate.py "$SWEEP_ROOT/pilot" --lrs "$PILOT_LRS" || status=1
  exit "$status"
fi
for size in $SIZES; do
  out="$SWEEP_ROOT/$size"
  $RG table "$out" --by experiment | tee "$out/sweep_table.md" || status=1
  # The five-benchmark table, all five arms: per-benchmark accuracy, AES vs GRPO, seeds as mean ± std.
  # The baseline is named by a path: three arms are GRPO, so "qwen3_<size>/grpo" alone is not one row.
  base=$(ls -d "$out"/*"experiment=paper_${size}_grpo,"*/ | head -1)
  $RG table "$out"/*/ "$(sweep_dir "$size" grpo_mb)"/*/ "$(sweep_dir "$size" grpo_compute)"/*/ --baseline "$base" \
    | tee "$out/benchmarks.md" || status=1
done
exit "$status"
