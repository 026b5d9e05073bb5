#!/usr/bin/env bash
# The toy experiment: what replay and the paper's design add over GRPO, at equal generated
# rollouts and at equal compute, over paired seeds, from the shipped base model.
#
#   scripts/toy_experiment.sh                    # both regimes, 8 seeds (see docs/toy_lab.md for the time)
#   scripts/toy_experiment.sh --dry-run          # print the commands only
#   SEEDS=0,1 STEPS=10 scripts/toy_experiment.sh # a quick try
#   scripts/toy_experiment.sh model=toy_weak     # extra args are Hydra overrides for every run
#
# Two Hydra multiruns, then `replaygrpo compare` on each (the report: AUC of accuracy vs
# rollouts as the primary metric, paired tests, Holm, TOST with margin MARGIN):
#   paper regime    (lr 1e-4, the paper's replay: tau_max 2, ratio 1): grpo, grpo_2x, naive replay, replay
#   leverage regime (lr 3e-4, replay tau_max 4, ratio 0.5: a pool several times R, rollouts
#                   that go stale): grpo, grpo_2x, naive replay, replay and one ablation each of
#                   priority (alpha 0), unit (group), age bound (none), anchor (off), clipping (off)
# Each arm is a preset conf/experiment/toy_*.yaml. Seeds are paired: seed s of every arm
# starts from the same base and draws the same prompt stream.
#
# Environment: SEEDS (default 0,1,2,3,4,5,6,7), STEPS (default 100), EVAL_EVERY (default 10),
# ROOT (default multirun/toy_experiment), OUT (default docs/results), MARGIN (default 0.02),
# REGIMES (default "paper leverage"), DRY_RUN=1 (same as --dry-run).
# Run dirs are never overwritten: remove ROOT to start over.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/_args.sh
parse_args "$@"
SEEDS="${SEEDS:-0,1,2,3,4,5,6,7}"
STEPS="${STEPS:-100}"
EVAL_EVERY="${EVAL_EVERY:-10}"
ROOT="${ROOT:-multirun/toy_experiment}"
OUT="${OUT:-docs/results}"
MARGIN="${MARGIN:-0.02}"
REGIMES="${REGIMES:-paper leverage}"
if command -v replaygrpo >/dev/null; then RG=replaygrpo; else RG=.venv/bin/replaygrpo; fi

declare -A ARMS LR
ARMS[paper]="toy_grpo,toy_grpo_2x,toy_naive_replay,toy_replay"
LR[paper]=1e-4
ARMS[leverage]="toy_grpo,toy_grpo_2x,toy_lev_naive_replay,toy_lev_replay,toy_lev_alpha0,toy_lev_unit_group,toy_lev_tau_none,toy_lev_no_anchor,toy_lev_no_clip"
LR[leverage]=3e-4

status=0
for regime in $REGIMES; do
  TRAIN=("$RG" train --multirun "experiment=${ARMS[$regime]}" "seed=$SEEDS" "trainer.lr=${LR[$regime]}"
         "trainer.steps=$STEPS" "trainer.eval_every=$EVAL_EVERY" "hydra.sweep.dir=$ROOT/$regime"
         ${EXTRA[@]+"${EXTRA[@]}"})
  COMPARE=("$RG" compare "$ROOT/$regime" --baseline experiment=toy_grpo --margin "$MARGIN"
           --out "$OUT/toy_experiment_$regime.md")
  COMPARE_TIME=("$RG" compare "$ROOT/$regime" --baseline experiment=toy_grpo --margin "$MARGIN" --x time
                --out "$OUT/toy_experiment_${regime}_time.md")
  if [ "$DRY_RUN" = 1 ]; then
    printf '%s\n' "${TRAIN[*]}" "${COMPARE[*]}" "${COMPARE_TIME[*]}"
    continue
  fi
  "${TRAIN[@]}" || status=$?  # a failed job stops Hydra's sweep; the report names what did not finish
  mkdir -p "$OUT"
  "${COMPARE[@]}"
  "${COMPARE_TIME[@]}"
done
exit "$status"
