"""Small Qwen3-architecture model configurations for the embedded testbed.

The testbed model is a genuine ``transformers`` Qwen3 causal LM (``Qwen3ForCausalLM``), only
small: it goes through exactly the code paths (``from_pretrained``, ``generate`` with a KV
cache, log-prob computation) that a real checkpoint such as Qwen3-1.7B uses.

Sizes (parameters with the 100-token character vocabulary):

========  ======  ======  =====  ========  ========  ============  ============
size      hidden  layers  heads  KV heads  head_dim  intermediate  parameters
========  ======  ======  =====  ========  ========  ============  ============
``tiny``  64      2       4      2         16        192           ~0.1 M
``small`` 128     4       4      2         32        384           ~0.86 M
========  ======  ======  =====  ========  ========  ============  ============

``tiny`` is for unit tests; ``small`` is the default testbed model.

Attention implementation: ``"sdpa"`` (PyTorch's ``scaled_dot_product_attention``), the
default of real Qwen3 checkpoints. On 2 CPU cores the two are within about 10-20% of each
other at these sizes (``small``, batch 64 x 64 tokens: sdpa 0.26 s vs eager 0.29 s per
training step; cached generation: eager about 10% faster), so the testbed keeps sdpa.
"""

from __future__ import annotations

__all__ = ["testbed_model_config", "MODEL_SIZES"]

#: Architecture hyperparameters per size.
MODEL_SIZES: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=192,
    ),
    "small": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=384,
    ),
}


def testbed_model_config(
    vocab_size: int,
    size: str = "small",
    *,
    pad_token_id: int | None = 0,
    eos_token_id: int | None = 1,
    bos_token_id: int | None = 2,
    max_position_embeddings: int = 256,
):
    """A small ``transformers.Qwen3Config`` for the testbed.

    Args:
        vocab_size: size of the tokenizer's vocabulary (``len(tokenizer)``).
        size: ``"tiny"`` (tests) or ``"small"`` (default); see the module table.
        pad_token_id, eos_token_id, bos_token_id: special-token ids (defaults match
            :func:`stalerl.testbed.tokenizer.build_char_tokenizer`).
        max_position_embeddings: longest sequence (prompt + completion) in tokens.

    Returns:
        A ``Qwen3Config`` with tied input/output embeddings, no sliding window, no
        dropout, ``attn_implementation="sdpa"``; build the model with
        ``transformers.AutoModelForCausalLM.from_config(config)``.

    Raises:
        ValueError: for an unknown ``size`` or a non-positive ``vocab_size``.
    """
    from transformers import Qwen3Config

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown testbed model size {size!r}; expected one of {sorted(MODEL_SIZES)}")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    arch = MODEL_SIZES[size]
    config = Qwen3Config(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        attention_dropout=0.0,
        attention_bias=False,
        hidden_act="silu",
        initializer_range=0.02,
        use_cache=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        **arch,
    )
    config._attn_implementation = "sdpa"
    return config
