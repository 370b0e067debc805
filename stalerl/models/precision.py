"""Mixed precision: float32 master weights and AdamW states, bf16/fp16 compute.

``model.dtype`` names the *compute* dtype. With ``bfloat16`` or ``float16`` and
``model.master_weights=true`` (the default) the parameters, their gradients and the AdamW moments
stay float32; the forward passes that score tokens (behaviour log-probs, the training forward) run
under ``torch.autocast`` in the low-precision dtype: matmuls in bf16/fp16, norms, softmax and the
log-prob reduction in float32. Generation samples from a copy of the weights in the low-precision
dtype made from the masters at each generation call (:func:`generation_model`), as the async
worker and an inference engine do. The sampler's and the behaviour log-probs and the objective
are float32 (:func:`stalerl.models.logprobs.completion_log_probs` upcasts each chunk's logits;
the objective runs outside the autocast region).

Why autocast and not a bf16 compute copy refreshed after each step: autocast keeps one set of
weights, so nothing can go out of sync, checkpoints (``save_pretrained``) write the float32
masters as they are (resume is exact) and the gradients arrive in float32 directly. The bf16 copies
of the weights that autocast makes live only while a forward/backward pass needs them. Memory per
parameter: 4 B master + 4 B gradient + 8 B AdamW moments + 2 B of bf16 weights (autocast's casts
while training, the generation copy while generating; never both) = 18 B, plus activations or
the KV cache. A persistent compute copy would add 2 B of bf16 gradients and a copy step after every
update. This is what transformers' ``Trainer`` (``bf16=True``) and Accelerate do for training.

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

__all__ = ["DTYPES", "autocast", "check_precision", "compute_dtype", "generation_model", "storage_dtype"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``model.dtype`` names -> torch dtypes."""


def compute_dtype(model_config) -> torch.dtype:
    """The dtype the policy computes in (``model.dtype``)."""
    return DTYPES[model_config.dtype]


def storage_dtype(model_config) -> torch.dtype:
    """The dtype the parameters (and so the AdamW states) are stored in: float32 with master
    weights, else ``model.dtype``."""
    return torch.float32 if model_config.master_weights else DTYPES[model_config.dtype]


def _in_compute_dtype(model, model_config) -> bool:
    """True when the model's weights are already in ``model.dtype`` (float32 runs, pure
    low-precision storage, the async worker's copy)."""
    return next(model.parameters()).dtype == compute_dtype(model_config)


def autocast(model_config, model):
    """A context running ``model``'s forward passes in ``model.dtype`` over float32 masters; a
    no-op when the weights are in ``model.dtype`` already."""
    if _in_compute_dtype(model, model_config):
        return contextlib.nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=compute_dtype(model_config))


def generation_model(model, model_config):
    """The model to sample with: ``model`` itself, or, over float32 masters, a copy in
    ``model.dtype`` made now from the masters (freed when the caller drops it).

    Decoding reads every weight once per generated token: under autocast each step would cast all
    float32 masters again (three times the weight traffic of a bf16 model) and the KV cache would
    hold float32 keys and values. The copy is what the async worker and inference engines sample
    with. It is built with the random stream forked, so it does not change the sampling noise.
    """
    if _in_compute_dtype(model, model_config):
        return model
    from transformers import AutoModelForCausalLM

    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        copy = AutoModelForCausalLM.from_config(model.config, dtype=compute_dtype(model_config))
    copy.load_state_dict(model.state_dict())  # tensor by tensor: one temporary at a time
    copy.generation_config = model.generation_config
    return copy.eval()


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
