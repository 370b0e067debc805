"""Per-token log-probabilities and entropies of completions, computed in chunks.

The naive way to score a completion is ``model(...).logits.float().log_softmax(-1)``,
which materialises a ``(B, T, V)`` float32 tensor (and, for the backward pass, several
more of the same size).  With a Qwen vocabulary (V = 151,936) that is 0.6 MB per token,
i.e. gigabytes for an ordinary RL micro-batch.

:func:`token_log_probs_from_hidden` instead takes the final hidden states and the
output-embedding matrix and processes the ``B*T`` token rows ``chunk_size`` at a time.
Each chunk's logits are upcast to float32, reduced to the target log-probability and
the entropy, and thrown away.  It is a :class:`torch.autograd.Function`: the backward
pass recomputes each chunk's logits rather than keeping them alive, so peak memory is
``O(chunk_size * V)`` in both directions, and the gradients equal the naive path's.

:func:`completion_log_probs` applies this to a ``transformers`` causal LM
(``naive=True`` gives the reference path through the full ``logits``).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor

__all__ = [
    "token_log_probs_from_hidden",
    "completion_log_probs",
    "position_ids_from_attention_mask",
]


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 are upcast)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _chunk_logits(
    h: Tensor, weight: Tensor, bias: Tensor | None, inv_temp: float, cdtype: torch.dtype
) -> Tensor:
    """Logits ``(h W^T + b) / temperature`` of one chunk, in the compute dtype.

    The matmul runs in the inputs' dtype (as ``lm_head`` does in the naive path) and
    its result is upcast, so low-precision weights are never copied whole to float32.
    """
    logits = h @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.to(cdtype)
    if inv_temp != 1.0:
        logits.mul_(inv_temp)
    return logits


def _addmm_acc(acc: Tensor, gz: Tensor, gz_in: Tensor, h: Tensor) -> None:
    """``acc += gz^T @ h`` in place, without a ``(V, H)`` temporary.

    ``acc`` and ``gz`` are in the compute dtype, ``gz_in``/``h`` in the inputs' dtype.
    Same dtype: a plain in-place ``addmm_``. Low-precision inputs on CUDA: the
    low-precision GEMM writing float32 directly (``out_dtype``); elsewhere, or if that
    is unsupported, a float32 GEMM on the (chunk-sized) upcast operands.
    """
    if h.dtype == acc.dtype:
        acc.addmm_(gz.t(), h)
        return
    if acc.is_cuda and acc.dtype == torch.float32:
        try:
            torch.addmm(acc, gz_in.t(), h, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError):
            pass
    acc.addmm_(gz.t(), h.to(acc.dtype))


class _ChunkedTokenLogProbs(torch.autograd.Function):
    """autograd.Function behind :func:`token_log_probs_from_hidden` (2-D inputs)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_temp, chunk_size, compute_entropy):
        n = hidden.shape[0]
        cdtype = _compute_dtype(hidden.dtype, weight.dtype)
        logp = torch.empty(n, dtype=cdtype, device=hidden.device)
        lse = torch.empty(n, dtype=cdtype, device=hidden.device)
        ent = torch.empty(n, dtype=cdtype, device=hidden.device) if compute_entropy else None
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            z = _chunk_logits(hidden[s:e], weight, bias, inv_temp, cdtype)
            c_lse = torch.logsumexp(z, dim=-1)
            lse[s:e] = c_lse
            logp[s:e] = z.gather(1, targets[s:e, None]).squeeze(1) - c_lse
            if compute_entropy:
                z.sub_(c_lse[:, None])  # z is now log p
                p = z.exp()
                # H = -sum p log p
                ent[s:e] = -(p.mul_(z)).sum(-1)
                del p
            del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.inv_temp = inv_temp
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        inv_temp, chunk_size = ctx.inv_temp, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if (g_logp is None and g_ent is None) or not (need_h or need_w or need_b):
            return None, None, None, None, None, None, None
        n = hidden.shape[0]
        cdtype = lse.dtype
        grad_h = torch.empty_like(hidden) if need_h else None
        # Weight/bias gradients are accumulated over chunks in the compute dtype (>= fp32).
        grad_w = torch.zeros(weight.shape, dtype=cdtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=cdtype, device=bias.device) if need_b else None
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            h = hidden[s:e]
            z = _chunk_logits(h, weight, bias, inv_temp, cdtype)
            z.sub_(lse[s:e, None])  # log p
            p = z.exp()
            # d logits: from logp[target]: g * (onehot - p); from H: -g_H * p * (log p + H)
            if g_ent is not None:
                gz = z.add_(ent[s:e, None]).mul_(p)  # p (log p + H), reusing z's storage
                gz.mul_(-g_ent[s:e, None].to(cdtype))
                if g_logp is not None:
                    gz.sub_(p.mul_(g_logp[s:e, None].to(cdtype)))
                del p
            else:
                del z
                gz = p.mul_(-g_logp[s:e, None].to(cdtype))
            if g_logp is not None:
                gz.scatter_add_(1, targets[s:e, None], g_logp[s:e, None].to(cdtype))
            if inv_temp != 1.0:
                gz.mul_(inv_temp)
            if need_b:
                grad_b += gz.sum(0)
            gz_in = gz if weight.dtype == cdtype else gz.to(weight.dtype)
            if need_h:  # matmul in the inputs' dtype, as autograd would do
                grad_h[s:e] = gz_in @ weight
            if need_w:
                _addmm_acc(grad_w, gz, gz_in, h)
            del gz, gz_in
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def token_log_probs_from_hidden(
    hidden: Tensor,
    lm_head_weight: Tensor,
    target_ids: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    compute_entropy: bool = True,
    lm_head_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of ``target_ids`` and entropy, without a ``(B, T, V)`` tensor.

    Computes, for every position, ``logits = (hidden @ lm_head_weight.T + bias) /
    temperature``, ``log_softmax(logits)[target]`` and the entropy ``-sum p log p`` of
    ``softmax(logits)``. The ``B*T`` rows are processed ``chunk_size`` at a time: each
    chunk's logits are computed by a matmul in the inputs' dtype, upcast to float32
    (float64 if an input is float64) and reduced, so peak memory is
    ``O(chunk_size * V)`` instead of ``O(B * T * V)``.

    Differentiable w.r.t. ``hidden``, ``lm_head_weight`` and ``lm_head_bias`` through a
    custom autograd function whose backward recomputes each chunk's logits; the
    gradients equal those of the naive ``log_softmax`` path (up to float rounding).
    The entropy output also carries gradient (it costs nothing extra since the
    backward recomputes the softmax anyway); detach it if it is only logged. When
    only one of the two outputs is used in the loss, only that one contributes.
    Weight and bias gradients are accumulated over chunks in float32 (float64 for
    float64 inputs) and cast to the parameter's dtype at the end.

    Args:
        hidden: ``(B, T, H)`` (or ``(N, H)``) final hidden states (after the final norm).
        lm_head_weight: ``(V, H)`` output-embedding matrix.
        target_ids: ``(B, T)`` (or ``(N,)``) token ids in ``[0, V)`` to score. Padding
            positions must still hold a valid id; the caller masks their outputs.
        temperature: logits are divided by it (as the sampler did), must be > 0.
        chunk_size: number of token rows per chunk; any positive value works (it need
            not divide ``B*T`` and may exceed it).
        compute_entropy: if False, the entropy is not computed and ``None`` is returned.
        lm_head_bias: optional ``(V,)`` bias of the output layer.

    Returns:
        ``(log_prob, entropy)``, each shaped like ``target_ids``, float32 (float64 when
        an input is float64); ``entropy`` is ``None`` if ``compute_entropy`` is False.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if hidden.shape[:-1] != target_ids.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and target_ids {tuple(target_ids.shape)} disagree"
        )
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"lm_head_weight {tuple(lm_head_weight.shape)} does not match hidden size {hidden.shape[-1]}"
        )
    out_shape = target_ids.shape
    h2 = hidden.reshape(-1, hidden.shape[-1])
    device_type = h2.device.type
    autocast_on = torch.is_autocast_enabled(device_type)
    if autocast_on:
        # Mixed precision: the head's matmuls in the autocast dtype (a differentiable cast, so the
        # float32 master receives a float32 gradient), the reductions in float32 as always.
        low = torch.get_autocast_dtype(device_type)
        lm_head_weight = lm_head_weight.to(low)
        lm_head_bias = lm_head_bias.to(low) if lm_head_bias is not None else None
    if h2.dtype != lm_head_weight.dtype:
        h2 = h2.to(lm_head_weight.dtype)
    t1 = target_ids.reshape(-1).long()
    with torch.autocast(device_type, enabled=False) if autocast_on else contextlib.nullcontext():
        logp, ent = _ChunkedTokenLogProbs.apply(
            h2, lm_head_weight, lm_head_bias, t1, 1.0 / float(temperature), int(chunk_size),
            bool(compute_entropy),
        )
    logp = logp.view(out_shape)
    ent = ent.view(out_shape) if ent is not None else None
    return logp, ent


def position_ids_from_attention_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that ignore left padding, as ``transformers``' ``generate`` builds them.

    ``cumsum(mask) - 1`` with padded positions set to 1, so the first real token of
    every row has position 0 whatever its amount of left padding. Without explicit
    ``position_ids`` transformers 5.x (Qwen3 included) uses ``arange(L)``, which would
    shift the rotary positions of left-padded rows relative to generation.
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill_(attention_mask == 0, 1)


def _has_nonlinear_head(model) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return False
    if getattr(cfg, "final_logit_softcapping", None):
        return True
    scale = getattr(cfg, "logit_scale", None)
    return scale is not None and scale != 1.0


def completion_log_probs(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_length: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    compute_entropy: bool = True,
    naive: bool = False,
    position_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs (and entropies) of the last ``response_length`` tokens.

    ``input_ids`` is ``prompt + response`` for each row, ``(B, L)``, with left-padded
    prompts and right-padded responses; ``attention_mask`` marks real tokens. The
    hidden states at positions ``L-R-1 … L-2`` predict tokens ``input_ids[:, L-R:]``,
    with ``R = response_length``. Outputs at padded response positions are garbage
    (finite) and must be masked by the caller.

    The default path runs the model body (``model.get_decoder()``, the transformer
    without its ``lm_head``), slices the hidden states of the response positions and
    applies :func:`token_log_probs_from_hidden` with the output-embedding weight, so
    no ``(B, L, V)`` tensor is built. ``naive=True`` is the reference path: the full
    ``model(...).logits``, upcast to float32, divided by ``temperature``,
    ``log_softmax`` and gather; entropy from the same distribution. Both paths feed
    the model the same ``input_ids``, ``attention_mask`` and ``position_ids``.
    Models whose head is not a plain linear layer (logit soft-capping, ``logit_scale``)
    fall back to the naive path with a warning.

    Args:
        model: a ``transformers`` causal LM (e.g. ``Qwen3ForCausalLM``).
        input_ids: ``(B, L)`` token ids.
        attention_mask: ``(B, L)`` 1 for real tokens, 0 for padding.
        response_length: ``R``, number of trailing tokens to score (``1 <= R < L``).
        temperature: sampling temperature; logits are divided by it.
        chunk_size: token rows per chunk for the chunked path.
        compute_entropy: also return the entropy of each position's distribution.
        naive: use the reference full-logits path.
        position_ids: optional ``(B, L)`` positions; by default
            :func:`position_ids_from_attention_mask` (left padding does not shift
            positions, matching ``generate``).

    Returns:
        ``(log_prob, entropy)``: ``(B, R)`` float32 tensors (float64 for a float64
        model) with gradient w.r.t. the model parameters; ``entropy`` is ``None`` if
        ``compute_entropy`` is False.
    """
    B, L = input_ids.shape
    R = int(response_length)
    if not 1 <= R < L:
        raise ValueError(f"response_length must be in [1, {L - 1}], got {R}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if position_ids is None:
        position_ids = position_ids_from_attention_mask(attention_mask)
    targets = input_ids[:, L - R :]
    if not naive and _has_nonlinear_head(model):
        warnings.warn(
            "model head applies soft-capping or logit scaling; using the naive log-prob path",
            stacklevel=2,
        )
        naive = True

    if naive:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        logits = out.logits[:, L - R - 1 : L - 1]
        cdtype = _compute_dtype(logits.dtype)
        logits = logits.to(cdtype) / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        log_prob = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1) if compute_entropy else None
        return log_prob, entropy

    body = model.get_decoder()
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    hidden = hidden[:, L - R - 1 : L - 1]
    head = model.get_output_embeddings()
    return token_log_probs_from_hidden(
        hidden,
        head.weight,
        targets,
        temperature=temperature,
        chunk_size=chunk_size,
        compute_entropy=compute_entropy,
        lm_head_bias=getattr(head, "bias", None),
    )
