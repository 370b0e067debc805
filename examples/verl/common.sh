#!/usr/bin/env bash
# Shared settings of the stalerl verl examples (sourced by the study scripts; not run directly).
#
# The M2PO paper's setting: Qwen3-1.7B-Base on DeepScaleR, 256 prompts x 8 responses per step,
# optimizer mini-batch 64 prompts (m = 4 updates per step), AdamW lr 1e-6 constant, weight decay
# 0.01, temperature 1, 16k context, no KL. 8 GPUs on one node. Every option below is a real
# verl 0.9.1 option (tests/test_integration_verl.py composes them with verl's ppo_trainer.yaml) or a
# stalerl one (+stalerl.staleness, policy_loss.stalerl). README.md says which are exact.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen3-1.7B-Base}
# verl-format parquet files written by `stalerl data prepare` (README.md): the M2PO template, rule
# reward_model. VAL_FILES: a Hydra list, e.g. "[$HOME/data/math500.parquet,$HOME/data/aime24x4.parquet]".
TRAIN_FILES=${TRAIN_FILES:-$HOME/data/deepscaler/train.parquet}
VAL_FILES=${VAL_FILES:-$HOME/data/math_eval/test.parquet}
N_GPUS=${N_GPUS:-8}
STEPS=${STEPS:-500}               # training steps with updates (m updates each); fill-up steps come on top
PROJECT=${PROJECT:-stalerl}
BASE_MODEL=${BASE_MODEL:-1}      # 1: pass-through chat template (base model, the papers); 0: the model's own
VAL_N=${VAL_N:-4}                # samples per validation prompt: avg@4; AIME files repeated 4x give avg@16
PROMPTS_PER_STEP=256
RESPONSES_PER_PROMPT=8
MINI_BATCH_PROMPTS=64            # verl counts prompts; x rollout.n responses per mini-batch
UPDATES_PER_STEP=$((PROMPTS_PER_STEP / MINI_BATCH_PROMPTS))   # m = 4

# stalerl's launcher: verl's main_ppo (same Hydra config) with stalerl's actor worker (mini-batch
# statistics, objective state in checkpoints) and stale-k trainer (FIFO of whole batches).
LAUNCH=(python3 -m stalerl.integrations.verl_main)

# Common overrides (Hydra) for verl's ppo_trainer.yaml.
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
  actor_rollout_ref.actor.shuffle=False
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
  actor_rollout_ref.rollout.val_kwargs.n=$VAL_N
  actor_rollout_ref.rollout.val_kwargs.temperature=1.0
  actor_rollout_ref.rollout.val_kwargs.top_p=1.0
  actor_rollout_ref.rollout.val_kwargs.do_sample=True
  # the M2PO paper's reward: math-verify on the last \boxed{}, 0.1 for a boxed wrong answer, hang-safe
  reward.custom_reward_function.path=pkg://stalerl.rewards.verl_score
  reward.custom_reward_function.name=compute_score
  +reward.custom_reward_function.reward_kwargs.format_score=0.1
  # behaviour log-probs recomputed by the actor right after generation (stale-k), not the engine's
  algorithm.rollout_correction.bypass_mode=False
  trainer.use_v1=False                     # verl's DataProto trainer, which stalerl's stale-k extends
  trainer.n_gpus_per_node=$N_GPUS
  trainer.nnodes=1
  trainer.save_freq=50
  trainer.test_freq=25
  trainer.project_name=$PROJECT
  'trainer.logger=[console,tensorboard]'
)
if [[ "$BASE_MODEL" == 1 ]]; then   # stalerl.data.prepare.PLAIN_CHAT_TEMPLATE: the prompt text alone
  COMMON+=("+actor_rollout_ref.model.custom_chat_template='{{ messages[0].content }}'")
fi

# The stalerl hyperparameter dict needs stalerl's PolicyLossConfig (verl's refuses unknown keys).
STALERL_TARGET=actor_rollout_ref.actor.policy_loss._target_=stalerl.integrations.verl.StaleRLPolicyLossConfig

# staleness_overrides S: the exact stale-k FIFO (S a multiple of m); S/m fill-up steps added.
staleness_overrides() {
  local s=$1
  echo "+stalerl.staleness=$s"
  echo "trainer.total_training_steps=$(( STEPS + s / UPDATES_PER_STEP ))"
}

# run NAME STALENESS OVERRIDES...: one verl run.
run() {
  local name=$1 s=$2; shift 2
  mapfile -t stale < <(staleness_overrides "$s")
  local args=("${COMMON[@]}" "${stale[@]}" trainer.experiment_name="$name-s$s" "$@")
  if [[ -n "${EXTRA_ARGS:-}" ]]; then read -r -a extra <<< "$EXTRA_ARGS"; args+=("${extra[@]}"); fi
  if [[ "${DRY_RUN:-0}" == 1 ]]; then   # print the launcher and the overrides (one per line)
    echo "== RUN $name-s$s"; echo "LAUNCH ${LAUNCH[*]}"; printf '%s\n' "${args[@]}"; return
  fi
  echo "== $name (staleness $s)"
  "${LAUNCH[@]}" "${args[@]}"
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
