#!/usr/bin/env bash
# The toy experiment: what replay and the paper's design add over GRPO, at equal generated
# rollouts and at equal compute, over paired seeds, from the shipped base model.
#
#   scripts/toy_experiment.sh                    # both regimes, 8 seeds (see docs/toy_lab.md for the time)
#   scripts/toy_experiment.sh --dry-run          # print the commands only
#   SEEDS=0,1 STEPS=10 scripts/toy_experiment.sh # a quick try
#   scripts/toy_experiment.sh model=toy_weak     # extra args are Hydra overrides for every run
#
# Per regime, Hydra multiruns (one per lane), then `replaygrpo compare` on the regime's sweep dirs
# (the report: AUC of accuracy vs rollouts as the primary metric, paired tests, Holm, TOST with
# margin MARGIN; the same against wall-clock seconds; and every arm against the paper's replay):
#   paper regime    (lr 1e-4, the paper's replay: tau_max 2, ratio 1): grpo, grpo with 4 mini-batches,
#                   grpo_2x (twice the prompts), naive replay, replay
#   leverage regime (lr 3e-4, replay tau_max 4, ratio 0.5: a pool several times R, rollouts
#                   that go stale): the same five arms, plus one ablation each of priority (alpha 0),
#                   unit (group), age bound (none), anchor (off), clipping (off)
# Each arm is a preset conf/experiment/toy_*.yaml. Seeds are paired: seed s of every arm
# starts from the same base and draws the same prompt stream.
#
# Lanes: the seeds are dealt round-robin to LANES processes that run side by side, each with one
# thread (OMP_NUM_THREADS=1), each running both regimes; within a multirun the seed is the outer
# loop, so every arm's runs spread over the whole run and meet the same machine load.
#
# Environment: SEEDS (default 0,1,2,3,4,5,6,7), STEPS (default: 40 in the paper regime, 30 in the
# leverage regime, whose lr is 3x and whose 10 arms are twice as many), EVAL_EVERY (default 10),
# LANES (default 2), ROOT (default multirun/toy_experiment), OUT (default docs/results),
# MARGIN (default 0.02), REGIMES (default "paper leverage"), DRY_RUN=1 (same as --dry-run).
# Run dirs are never overwritten: remove ROOT to start over.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/_args.sh
parse_args "$@"
SEEDS="${SEEDS:-0,1,2,3,4,5,6,7}"
STEPS="${STEPS:-}"
EVAL_EVERY="${EVAL_EVERY:-10}"
LANES="${LANES:-2}"
ROOT="${ROOT:-multirun/toy_experiment}"
OUT="${OUT:-docs/results}"
MARGIN="${MARGIN:-0.02}"
REGIMES="${REGIMES:-paper leverage}"

declare -A ARMS LR
ARMS[paper]="toy_grpo,toy_grpo_mb,toy_grpo_2x,toy_naive_replay,toy_replay"
LR[paper]=1e-4
ARMS[leverage]="toy_grpo,toy_grpo_mb,toy_grpo_2x,toy_lev_naive_replay,toy_lev_replay,toy_lev_alpha0,toy_lev_unit_group,toy_lev_tau_none,toy_lev_no_anchor,toy_lev_no_clip"
LR[leverage]=3e-4
declare -A STEPS_OF=([paper]="${STEPS:-40}" [leverage]="${STEPS:-30}")

IFS=, read -r -a SEED_LIST <<< "$SEEDS"
(( LANES > ${#SEED_LIST[@]} )) && LANES=${#SEED_LIST[@]}
lane_seeds() {  # the seeds of lane $1, comma-separated
  local out=() i
  for ((i = $1; i < ${#SEED_LIST[@]}; i += LANES)); do out+=("${SEED_LIST[i]}"); done
  (IFS=,; echo "${out[*]}")
}
train_cmd() {  # regime, lane
  TRAIN=("$RG" train --multirun "seed=$(lane_seeds "$2")" "experiment=${ARMS[$1]}" "trainer.lr=${LR[$1]}"
         "trainer.steps=${STEPS_OF[$1]}" "trainer.eval_every=$EVAL_EVERY" "hydra.sweep.dir=$ROOT/$1/lane$2"
         ${EXTRA[@]+"${EXTRA[@]}"})
}
run_lane() {  # lane: both regimes in turn; a failed job stops its sweep, the report names what did not finish
  local regime rc=0
  for regime in $REGIMES; do
    train_cmd "$regime" "$1"
    OMP_NUM_THREADS=1 "${TRAIN[@]}" > "$ROOT/lane$1.$regime.log" 2>&1 || rc=$?
  done
  return "$rc"
}

status=0
if [ "$DRY_RUN" = 1 ]; then
  for regime in $REGIMES; do
    for ((lane = 0; lane < LANES; lane++)); do train_cmd "$regime" "$lane"; echo "OMP_NUM_THREADS=1 ${TRAIN[*]}"; done
  done
else
  mkdir -p "$ROOT"
  start=$(date +%s)
  pids=()
  for ((lane = 0; lane < LANES; lane++)); do run_lane "$lane" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  echo "training took $(( $(date +%s) - start )) s ($LANES lanes, seeds $SEEDS, regimes $REGIMES)" \
    | tee -a "$ROOT/time.txt"
  mkdir -p "$OUT"
fi
declare -A REPLAY=([paper]=toy_replay [leverage]=toy_lev_replay)
for regime in $REGIMES; do
  dirs=()
  for ((lane = 0; lane < LANES; lane++)); do dirs+=("$ROOT/$regime/lane$lane"); done
  # Against GRPO at equal rollouts and at equal wall-clock; then every arm against the paper's replay
  # (what each ablation of its design changes).
  for report in "toy_grpo rollouts" "toy_grpo time" "${REPLAY[$regime]} rollouts"; do
    read -r base axis <<< "$report"
    suffix=$([ "$axis" = rollouts ] && echo "" || echo "_$axis")
    [ "$base" = toy_grpo ] || suffix="_vs_replay"
    COMPARE=("$RG" compare "${dirs[@]}" --baseline "experiment=$base" --margin "$MARGIN" --x "$axis"
             --out "$OUT/toy_experiment_$regime$suffix.md")
    if [ "$DRY_RUN" = 1 ]; then echo "${COMPARE[*]}"; else "${COMPARE[@]}"; fi
  done
done
exit "$status"
