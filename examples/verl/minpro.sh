#!/usr/bin/env bash
# Study "minpro": grpo (clip 0.2/0.28), gspo (2e-3/2e-3), cispo (weight in [0, 5]), m2po, minpro.
# CISPO and MinPRO: clip_ratio_low=1.0 / clip_ratio_high=4.0 is stalerl's epsilon_low/high, a
# detached weight clipped to [1-1, 1+4] = [0, 5] (the MinPRO paper's setting).
# The MinPRO paper's delay is two generation batches (s = 2m) and its metric pass@k: VAL_N samples
# per prompt (default 128, as `stalerl eval --protocol minpro`) dumped to trainer.validation_data_dir;
# stalerl.integrations.verl_eval.pass_at_k_from_dump computes the unbiased pass@k from each dump.
# Usage: bash examples/verl/minpro.sh   (env: STALENESS, default 2m = 8; CONDITIONS; VAL_N; VAL_DUMP_DIR)
VAL_N=${VAL_N:-128}
source "$(dirname "$0")/common.sh"
S=${STALENESS:-$((2 * UPDATES_PER_STEP))}
VAL_DUMP_DIR=${VAL_DUMP_DIR:-$HOME/stalerl_verl_val}
CONDITIONS=${CONDITIONS:-"grpo gspo cispo m2po minpro"}
SOFT_CLIP=(actor_rollout_ref.actor.clip_ratio_low=1.0 actor_rollout_ref.actor.clip_ratio_high=4.0)
mrun() { local name=$1; shift; run "$name" "$S" "$@" trainer.validation_data_dir="$VAL_DUMP_DIR/$name-s$S"; }
for method in $CONDITIONS; do
  case $method in
    grpo) mrun minpro-grpo "${GRPO_CLIP_HIGHER[@]}" ;;
    gspo) mrun minpro-gspo actor_rollout_ref.actor.policy_loss.loss_mode=stalerl_gspo \
            actor_rollout_ref.actor.clip_ratio_low=2e-3 actor_rollout_ref.actor.clip_ratio_high=2e-3 \
            actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean ;;
    cispo) mrun minpro-cispo actor_rollout_ref.actor.policy_loss.loss_mode=stalerl_cispo "${SOFT_CLIP[@]}" ;;
    m2po) mrun minpro-m2po "${M2PO[@]}" ;;
    minpro) mrun minpro-minpro actor_rollout_ref.actor.policy_loss.loss_mode=minpro "${SOFT_CLIP[@]}" ;;
    *) echo "unknown method $method" >&2; exit 2 ;;
  esac
done
