#!/usr/bin/env bash
# Shared settings of the stalerl verl examples (sourced by the study scripts; not run directly).
#
# The M2PO paper's setting: Qwen3-1.7B-Base on DeepScaleR, 256 prompts x 8 responses per step,
# optimizer mini-batch 64 prompts (m = 4 updates per step), AdamW lr 1e-6 constant, weight decay
# 0.01, temperature 1, 16k context, no KL. 8 GPUs on one node. Every option below is a real
# verl 0.9.1 option (checked against verl/trainer/config/ppo_trainer.yaml).
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen3-1.7B-Base}
# verl-format parquet files (prompt / reward_model.ground_truth / data_source); see README.md.
TRAIN_FILES=${TRAIN_FILES:-$HOME/data/deepscaler/train.parquet}
VAL_FILES=${VAL_FILES:-$HOME/data/math_eval/test.parquet}
N_GPUS=${N_GPUS:-8}
STEPS=${STEPS:-500}
PROJECT=${PROJECT:-stalerl}
PROMPTS_PER_STEP=256
RESPONSES_PER_PROMPT=8
MINI_BATCH_PROMPTS=64            # verl counts prompts; x rollout.n responses per mini-batch
UPDATES_PER_STEP=$((PROMPTS_PER_STEP / MINI_BATCH_PROMPTS))   # m = 4

# Common overrides (Hydra) for verl.trainer.main_ppo.
COMMON=(
  algorithm.adv_estimator=grpo
  algorithm.use_kl_in_reward=False
  data.train_files="$TRAIN_FILES"
  data.val_files="$VAL_FILES"
  data.train_batch_size=$PROMPTS_PER_STEP
  data.max_prompt_length=1024
  data.max_response_length=15360          # 1k prompt + 15k response = 16k context
  data.filter_overlong_prompts=True
  data.truncation=error
  actor_rollout_ref.model.path="$MODEL"
  actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.actor.ppo_mini_batch_size=$MINI_BATCH_PROMPTS
  actor_rollout_ref.actor.ppo_epochs=1
  actor_rollout_ref.actor.use_dynamic_bsz=True
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=32768
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.optim.weight_decay=0.01
  actor_rollout_ref.actor.optim.lr_scheduler_type=constant
  actor_rollout_ref.actor.optim.lr_warmup_steps=0
  actor_rollout_ref.actor.optim.clip_grad=1.0
  actor_rollout_ref.actor.use_kl_loss=False
  actor_rollout_ref.actor.entropy_coeff=0
  actor_rollout_ref.actor.loss_agg_mode=token-mean
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.n=$RESPONSES_PER_PROMPT
  actor_rollout_ref.rollout.temperature=1.0
  actor_rollout_ref.rollout.top_p=1.0
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.calculate_log_probs=True
  actor_rollout_ref.rollout.val_kwargs.n=4
  actor_rollout_ref.rollout.val_kwargs.temperature=1.0
  actor_rollout_ref.rollout.val_kwargs.do_sample=True
  # old_log_prob = the behaviour policy's (the rollout engine's) log-probs, so that the loss sees
  # the staleness; the V1 trainer keeps our loss_mode in bypass mode (the legacy trainer does not).
  algorithm.rollout_correction.bypass_mode=True
  trainer.use_v1=True
  trainer.n_gpus_per_node=$N_GPUS
  trainer.nnodes=1
  trainer.total_training_steps=$STEPS
  trainer.save_freq=50
  trainer.test_freq=25
  trainer.project_name=$PROJECT
  'trainer.logger=[console,tensorboard]'
)

# The stalerl hyperparameter dict needs stalerl's PolicyLossConfig (verl's refuses unknown keys).
STALERL_TARGET=actor_rollout_ref.actor.policy_loss._target_=stalerl.integrations.verl.StaleRLPolicyLossConfig

# staleness_overrides S: on-policy (S=0) or stale by about S optimizer updates.
# verl has no exact stale-k FIFO (stalerl's own loop and the released M2PO code do). The V1
# colocate_async trainer prefetches num_warmup_batches generation batches ahead, so a batch is
# consumed about S/m steps after it was requested; max_off_policy_threshold bounds the number of
# model versions a trajectory may span. With partial rollouts a trajectory may span several
# versions, so the staleness is approximate (not exactly S): verl logs the real spans.
staleness_overrides() {
  local s=$1
  if [[ "$s" -eq 0 ]]; then
    echo "trainer.v1.trainer_mode=sync"
  else
    local lag=$(( s / UPDATES_PER_STEP ))
    echo "trainer.v1.trainer_mode=colocate_async"
    echo "trainer.v1.colocate_async.num_warmup_batches=$lag"
    echo "trainer.v1.sampler.max_off_policy_threshold=$(( lag + 1 ))"
    echo "trainer.v1.sampler.max_off_policy_strategy=wait"
  fi
}

# run NAME STALENESS OVERRIDES...: one verl run.
run() {
  local name=$1 s=$2; shift 2
  mapfile -t stale < <(staleness_overrides "$s")
  local args=("${COMMON[@]}" "${stale[@]}" trainer.experiment_name="$name-s$s" "$@")
  if [[ -n "${EXTRA_ARGS:-}" ]]; then read -r -a extra <<< "$EXTRA_ARGS"; args+=("${extra[@]}"); fi
  if [[ "${DRY_RUN:-0}" == 1 ]]; then   # print the overrides (one per line) instead of launching
    echo "== RUN $name-s$s"; printf '%s\n' "${args[@]}"; return
  fi
  echo "== $name (staleness $s)"
  python3 -m verl.trainer.main_ppo "${args[@]}"
}

# Loss-specific overrides. verl's clip_ratio_low/high/c are stalerl's epsilon_low/high/dual_clip.
GRPO=(actor_rollout_ref.actor.policy_loss.loss_mode=grpo
      actor_rollout_ref.actor.clip_ratio_low=0.2 actor_rollout_ref.actor.clip_ratio_high=0.2)
GRPO_CLIP_HIGHER=(actor_rollout_ref.actor.policy_loss.loss_mode=grpo
      actor_rollout_ref.actor.clip_ratio_low=0.2 actor_rollout_ref.actor.clip_ratio_high=0.28)
NO_TR=(actor_rollout_ref.actor.policy_loss.loss_mode=no_tr)
GSPO=(actor_rollout_ref.actor.policy_loss.loss_mode=stalerl_gspo
      actor_rollout_ref.actor.clip_ratio_low=3e-4 actor_rollout_ref.actor.clip_ratio_high=4e-4
      actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean)
M2PO=(actor_rollout_ref.actor.policy_loss.loss_mode=m2po "$STALERL_TARGET"
      '+actor_rollout_ref.actor.policy_loss.stalerl={tau:0.04}')
