"""GPU check: a few steps of the real training loop at Qwen3-0.6B's shape, in bf16, with long responses.

Builds a randomly initialised model with Qwen3-0.6B's architecture from a ``transformers``
``Qwen3Config`` (no download: hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128,
intermediate 3072, tied embeddings, Qwen's vocabulary of 151,936 tokens so that the parameter
count, 596M, and the output layer's cost are the real model's). Prompts come from the testbed task
and its character tokenizer (ids below 100; the sampled ids above that decode to nothing, which
only affects the reward). The model is saved and loaded through :func:`stalerl.training.loop.load_policy`
exactly as ``stalerl train model.path=...`` loads a checkpoint, then each step runs the loop's own
pieces: :func:`~stalerl.rollout.batch.make_rollout_batch` (generation, math-verify reward, group
advantages, behaviour log-probs) and :func:`~stalerl.training.loop.update` (GRPO, token-budget
micro-batches, float32 masters with bf16 autocast, AdamW at lr 1e-6). A random model rarely emits
EOS, and ``min_new_tokens`` is set to the cap in the model's generation config, so every response
is ``--max-new-tokens`` long (the printed mean length says whether the generation engine honoured it).

Printed per step and as the mean over the steps after the first (warm-up):

* generation tokens/s: response tokens / ``timing_s/gen``;
* training tokens/s: prompt + response tokens of the batch (each trained on once) / the time of
  its ``optim.mini_batches`` updates;
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU;
* MFU: ``6 * N * training tokens / training time / peak`` (and ``2 * N`` per generated token for
  generation), N = parameters. The attention term that grows with the sequence length and the
  recomputation of gradient checkpointing are not counted, so this is a lower bound. The peak is
  ``--peak-tflops``: 989 (dense bf16 of an H100/H200 SXM) by default; pass your device's.

Usage::

    python benchmarks/gpu_check.py                         # one GPU: 0.6B shape, 4096-token responses
    python benchmarks/gpu_check.py --steps 3 --prompts 16 --group-size 8
    python benchmarks/gpu_check.py --tiny                  # any CPU, seconds (a 2-layer model, 32 tokens)
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

QWEN3_0_6B = {"vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
              "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
              "max_position_embeddings": 40960, "rope_theta": 1_000_000.0}
"""Qwen3-0.6B's config.json (its vocabulary included)."""
TINY = {"vocab_size": None, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
        "rope_theta": 10_000.0}
"""The tiny testbed's shape; ``vocab_size`` None = the testbed tokenizer's (100)."""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model with the testbed vocabulary, for a CPU")
    ap.add_argument("--steps", type=int, default=3, help="training steps (the first is reported as warm-up)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (rollout.prompts_per_step)")
    ap.add_argument("--group-size", type=int, default=4, help="responses per prompt (rollout.group_size)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="response length (default 4096; --tiny 32)")
    ap.add_argument("--max-tokens-per-micro-batch", type=int, default=None,
                    help="optim.max_tokens_per_micro_batch (default 32768; --tiny 256)")
    ap.add_argument("--mini-batches", type=int, default=2, help="optimizer updates per step (optim.mini_batches)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="model.dtype")
    ap.add_argument("--device", default="auto", help="model.device")
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the device's peak dense TFLOP/s in --dtype (989: H100/H200 SXM bf16)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def _model_dir(tmp: Path, tiny: bool) -> tuple[Path, int]:
    """A randomly initialised Qwen3 of the chosen shape plus the testbed tokenizer, saved with
    ``save_pretrained`` (float32); returns the directory and the parameter count."""
    from transformers import AutoModelForCausalLM, Qwen3Config
    from transformers.utils import logging as hf_logging

    from stalerl.testbed.tokenizer import build_char_tokenizer

    hf_logging.disable_progress_bar()

    tokenizer = build_char_tokenizer(model_max_length=40960)
    shape = dict(TINY if tiny else QWEN3_0_6B)
    shape["vocab_size"] = shape["vocab_size"] or len(tokenizer)
    config = Qwen3Config(**shape, tie_word_embeddings=True, rms_norm_eps=1e-6, attention_dropout=0.0,
                         use_sliding_window=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return tmp, model.num_parameters()


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict[str, float]:
    args = parse_args(argv)
    from stalerl import objectives
    from stalerl.data.prompts import PromptSampler, build_prompts
    from stalerl.rewards import build_reward_fn
    from stalerl.rollout.batch import make_rollout_batch
    from stalerl.training import loop
    from stalerl.training.config import load_config

    max_new = args.max_new_tokens or (32 if args.tiny else 4096)
    budget = args.max_tokens_per_micro_batch or (256 if args.tiny else 32768)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="stalerl-gpu-check-") as tmp:
        path, n_params = _model_dir(Path(tmp), args.tiny)
        config = load_config(None, [
            f"model.path={path}", f"model.dtype={args.dtype}", f"model.device={args.device}",
            "model.attn_implementation=sdpa",
            f"model.gradient_checkpointing={str(not args.no_gradient_checkpointing and not args.tiny).lower()}",
            f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group_size}",
            f"rollout.max_new_tokens={max_new}", f"rollout.batch_size={args.prompts * args.group_size}",
            f"optim.mini_batches={args.mini_batches}", f"optim.max_tokens_per_micro_batch={budget}",
            "optim.lr=1e-6", "objective.name=grpo", "stale.staleness=0", "reward.num_workers=1",
            "data.eval_size=0", "data.testbed_train_size=1000", f"seed={args.seed}",
        ])
        model, tokenizer, _ = loop.load_policy(config, progress=False)
    model.generation_config.min_new_tokens = max_new  # a random model rarely stops: force the length
    device = next(model.parameters()).device
    prompts, _ = build_prompts("testbed", split="train", size=config.data.testbed_train_size, tokenizer=tokenizer,
                               data_config=config.data, seed=args.seed)
    sampler = PromptSampler(prompts, seed=args.seed)
    objective = objectives.build(config.objective.name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
                                  weight_decay=config.optim.weight_decay)
    reward_fn = build_reward_fn(config.reward)
    state = loop.LoopState()
    peak_flops = args.peak_tflops * 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, model.dtype={args.dtype} "
          f"(float32 masters: {config.model.master_weights}), N = {n_params / 1e6:.1f}M parameters, "
          f"{args.prompts}x{args.group_size} responses of up to {max_new} tokens, "
          f"micro-batch budget {budget} tokens, peak {args.peak_tflops:g} TFLOP/s")
    print(f"{'step':>4} {'resp len':>8} {'gen tok/s':>10} {'train tok/s':>11} {'gen MFU':>8} {'train MFU':>9} "
          f"{'peak GB':>8}")
    rows = []
    try:
        for step in range(args.steps):
            batch = make_rollout_batch(config, model, tokenizer, sampler, reward_fn, state.updates, False)
            gen_tokens, t_gen = batch.info["perf/generated_tokens"], batch.info["timing_s/gen"]
            _sync(device)
            t0 = time.perf_counter()
            for mini in torch.randperm(len(batch)).chunk(config.optim.mini_batches):
                loop.update(config, model, optimizer, objective, batch, mini, state)
            _sync(device)
            t_train = time.perf_counter() - t0
            row = {
                "response_length_mean": gen_tokens / len(batch),
                "generation_tokens_per_s": gen_tokens / t_gen,
                "training_tokens_per_s": batch.num_tokens / t_train,
                "generation_mfu": 2 * n_params * gen_tokens / t_gen / peak_flops,
                "training_mfu": 6 * n_params * batch.num_tokens / t_train / peak_flops,
                "peak_memory_gb": _peak_memory_gb(device),
            }
            rows.append(row)
            print(f"{step + 1:>4} {row['response_length_mean']:>8.0f} {row['generation_tokens_per_s']:>10.1f} "
                  f"{row['training_tokens_per_s']:>11.1f} {_pct(row['generation_mfu']):>8} {_pct(row['training_mfu']):>9} "
                  f"{row['peak_memory_gb']:>8.2f}")
    finally:
        if hasattr(reward_fn, "close"):
            reward_fn.close()
    measured = rows[1:] or rows
    summary = {k: sum(r[k] for r in measured) / len(measured) for k in rows[0]}
    summary["peak_memory_gb"] = max(r["peak_memory_gb"] for r in rows)
    print(f"mean over steps {2 if len(rows) > 1 else 1}..{len(rows)}: "
          f"generation {summary['generation_tokens_per_s']:.1f} tokens/s, "
          f"training {summary['training_tokens_per_s']:.1f} tokens/s, "
          f"MFU {_pct(summary['training_mfu'])} (training) / {_pct(summary['generation_mfu'])} (generation), "
          f"peak memory {summary['peak_memory_gb']:.2f} GB "
          f"({'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'peak RSS'})")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
