#!/usr/bin/env bash
# Study "ac-mispo": grpo, mispo, m2po, ac_mispo and MIS-PO fixed at AC-MIS-PO's final bound.
# With stalerl's actor worker AC-MIS-PO's controller steps once per optimizer mini-batch, identically
# on every rank, and is saved in verl's checkpoints; its warm-up counts training steps (4 mini-batches
# each here), the paper's 200.
# Usage: bash examples/verl/ac_mispo.sh   (env: STALENESS, default 256; CONDITIONS)
source "$(dirname "$0")/common.sh"
S=${STALENESS:-256}
CONDITIONS=${CONDITIONS:-"grpo mispo m2po ac_mispo mispo_fixed_final"}
for method in $CONDITIONS; do
  case $method in
    grpo) run ac-mispo-grpo "$S" "${GRPO[@]}" ;;
    mispo) run ac-mispo-mispo "$S" actor_rollout_ref.actor.policy_loss.loss_mode=mispo ;;
    m2po) run ac-mispo-m2po "$S" "${M2PO[@]}" ;;
    ac_mispo)
      run ac-mispo-ac_mispo "$S" actor_rollout_ref.actor.policy_loss.loss_mode=ac_mispo "$STALERL_TARGET" \
        '+actor_rollout_ref.actor.policy_loss.stalerl={warmup_train_steps:200,updates_per_train_step:4}' ;;
    mispo_fixed_final)   # the preset mispo_fixed_final: MIS-PO with [0.9998, 1.0002]
      run ac-mispo-fixed-final "$S" actor_rollout_ref.actor.policy_loss.loss_mode=mispo "$STALERL_TARGET" \
        '+actor_rollout_ref.actor.policy_loss.stalerl={traj_low:0.9998,traj_high:1.0002}' ;;
    *) echo "unknown method $method" >&2; exit 2 ;;
  esac
done
