"""Mixed precision: float32 master weights and AdamW states, bf16/fp16 compute.

``model.dtype`` names the *compute* dtype. With ``bfloat16`` or ``float16`` and
``model.master_weights=true`` (the default) the parameters, their gradients and the AdamW moments
stay float32 and every forward pass of the policy (generation, behaviour log-probs, the training
forward) runs under ``torch.autocast`` in the low-precision dtype: matmuls in bf16/fp16, norms,
softmax and the log-prob reduction in float32. The sampler's and the behaviour log-probs and the
objective are float32 (:func:`stalerl.training.logprobs.completion_log_probs` upcasts each
chunk's logits; the objective runs outside the autocast region).

Why autocast and not a bf16 compute copy refreshed after each step: autocast keeps one set of
weights, so nothing can go out of sync, checkpoints (``save_pretrained``) write the float32
masters as they are (resume is exact) and the gradients arrive in float32 directly. The bf16 copies
of the weights that autocast makes live only while a forward/backward pass needs them. Memory per
parameter: 4 B master + 4 B gradient + 8 B AdamW moments + up to 2 B of bf16 casts = 16-18 B. A
persistent compute copy would cost the same 2 B plus 2 B of bf16 gradients, and a copy step after
every update. This is what transformers' ``Trainer`` (``bf16=True``) and Accelerate do.

Why masters at all: an AdamW step moves a weight by about ``lr`` (the first step exactly
``lr * sign(g)``); at the papers' ``lr = 1e-6`` that is far below the spacing of bf16 numbers near
a typical weight (2^-7 relative: about 1.2e-4 at 0.02), so an update applied to bf16 storage
rounds back to the same weight. ``model.master_weights=false`` keeps that pure low-precision
storage (half the memory) as an explicit opt-in and warns. ``tests/test_training.py``
``test_bf16_masters_update_equals_float32_update`` measures both.

``float16`` computes without loss scaling: gradients below float16's smallest normal (6e-5) lose
precision and below 6e-8 vanish; prefer ``bfloat16`` where the hardware has it (a warning says so).
"""

from __future__ import annotations

import contextlib
import warnings

import torch

__all__ = ["DTYPES", "storage_dtype", "compute_dtype", "autocast", "check_precision"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``model.dtype`` names -> torch dtypes."""


def compute_dtype(model_config) -> torch.dtype:
    """The dtype the policy computes in (``model.dtype``)."""
    return DTYPES[model_config.dtype]


def storage_dtype(model_config) -> torch.dtype:
    """The dtype the parameters (and so the AdamW states) are stored in: float32 with master
    weights, else ``model.dtype``."""
    return torch.float32 if model_config.master_weights else DTYPES[model_config.dtype]


def autocast(model_config, device: torch.device | str):
    """A context running the policy's forward passes in ``model.dtype`` over float32 masters;
    a no-op for ``float32`` and for pure low-precision storage."""
    dtype = compute_dtype(model_config)
    if dtype == torch.float32 or not model_config.master_weights:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def check_precision(model_config) -> None:
    """Warn about the precision settings that degrade training."""
    if model_config.dtype == "float32":
        return
    if not model_config.master_weights:
        warnings.warn(
            f"model.dtype={model_config.dtype} with model.master_weights=false stores the weights and the "
            "AdamW states in low precision: updates smaller than the dtype's spacing (about 1e-4 near a "
            "weight of 0.02 in bfloat16, far above lr=1e-6 steps) round away and the run barely moves; "
            "set model.master_weights=true for float32 masters",
            stacklevel=2,
        )
    elif model_config.dtype == "float16":
        warnings.warn(
            "model.dtype=float16 computes without loss scaling: gradients below float16's range "
            "underflow; use bfloat16 where the hardware supports it",
            stacklevel=2,
        )
