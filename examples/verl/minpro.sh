#!/usr/bin/env bash
# Study "minpro": grpo (clip 0.2/0.28), gspo (2e-3/2e-3), cispo (weight in [0, 5]), m2po, minpro.
# CISPO and MinPRO: clip_ratio_low=1.0 / clip_ratio_high=4.0 is stalerl's epsilon_low/high, a
# detached weight clipped to [1-1, 1+4] = [0, 5] (the MinPRO paper's setting).
# Usage: bash examples/verl/minpro.sh   (env: STALENESS, default 256; CONDITIONS)
source "$(dirname "$0")/common.sh"
S=${STALENESS:-256}
CONDITIONS=${CONDITIONS:-"grpo gspo cispo m2po minpro"}
SOFT_CLIP=(actor_rollout_ref.actor.clip_ratio_low=1.0 actor_rollout_ref.actor.clip_ratio_high=4.0)
for method in $CONDITIONS; do
  case $method in
    grpo) run minpro-grpo "$S" "${GRPO_CLIP_HIGHER[@]}" ;;
    gspo) run minpro-gspo "$S" actor_rollout_ref.actor.policy_loss.loss_mode=stalerl_gspo \
            actor_rollout_ref.actor.clip_ratio_low=2e-3 actor_rollout_ref.actor.clip_ratio_high=2e-3 \
            actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean ;;
    cispo) run minpro-cispo "$S" actor_rollout_ref.actor.policy_loss.loss_mode=stalerl_cispo "${SOFT_CLIP[@]}" ;;
    m2po) run minpro-m2po "$S" "${M2PO[@]}" ;;
    minpro) run minpro-minpro "$S" actor_rollout_ref.actor.policy_loss.loss_mode=minpro "${SOFT_CLIP[@]}" ;;
    *) echo "unknown method $method" >&2; exit 2 ;;
  esac
done
