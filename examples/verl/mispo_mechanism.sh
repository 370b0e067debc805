#!/usr/bin/env bash
# Study "mispo-mechanism": MIS-PO, its TokenOnly ablation and the RandomTraj control, stale data.
# RandomTraj's N_acc and draw are the whole mini-batch's (stalerl's actor worker).
# Usage: bash examples/verl/mispo_mechanism.sh   (env: STALENESS, default 256; CONDITIONS)
source "$(dirname "$0")/common.sh"
S=${STALENESS:-256}
CONDITIONS=${CONDITIONS:-"mispo mispo_token_only mispo_random_traj"}
for method in $CONDITIONS; do
  case $method in
    mispo|mispo_token_only)
      run "mispo-mechanism-$method" "$S" actor_rollout_ref.actor.policy_loss.loss_mode=$method ;;
    mispo_random_traj)
      run "mispo-mechanism-$method" "$S" actor_rollout_ref.actor.policy_loss.loss_mode=$method \
        "$STALERL_TARGET" '+actor_rollout_ref.actor.policy_loss.stalerl={seed:0}' ;;
    *) echo "unknown method $method" >&2; exit 2 ;;
  esac
done
