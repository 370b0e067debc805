#!/usr/bin/env bash
# Study "prosperity" (M2PO paper, "prosperity before collapse"): grpo, no_tr, gspo, m2po at
# staleness 0 and 256. 8 runs; pick some with CONDITIONS="m2po:256 grpo:256".
# Usage: bash examples/verl/prosperity.sh            (env: MODEL TRAIN_FILES VAL_FILES STEPS EXTRA_ARGS)
source "$(dirname "$0")/common.sh"
S=${STALENESS:-256}
CONDITIONS=${CONDITIONS:-"grpo:0 no_tr:0 gspo:0 m2po:0 grpo:$S no_tr:$S gspo:$S m2po:$S"}
for cond in $CONDITIONS; do
  method=${cond%%:*}; s=${cond##*:}
  case $method in
    grpo)  run prosperity-grpo  "$s" "${GRPO[@]}" ;;
    no_tr) run prosperity-no_tr "$s" "${NO_TR[@]}" ;;
    gspo)  run prosperity-gspo  "$s" "${GSPO[@]}" ;;
    m2po)  run prosperity-m2po  "$s" "${M2PO[@]}" ;;
    *) echo "unknown method $method" >&2; exit 2 ;;
  esac
done
