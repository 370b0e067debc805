"""Chunked log-prob / entropy computation agrees with the naive full-logits path."""

from __future__ import annotations

import pytest
import torch

from stalerl.models.logprobs import (
    completion_log_probs,
    position_ids_from_attention_mask,
    token_log_probs_from_hidden,
)

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN = 1000, 64
B, L, R = 3, 12, 7  # B*R = 21 scored rows


def _naive(hidden, weight, targets, temperature=1.0, bias=None):
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logp_all = torch.log_softmax(logits.double() / temperature, dim=-1)
    lp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logp_all.exp() * logp_all).sum(-1)
    return lp, ent


def _make_model(tie: bool):
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    # sdpa: transformers 5.10's eager attention gives NaN for left-padded rows in float64
    cfg._attn_implementation = "sdpa"
    m = transformers.Qwen3ForCausalLM(cfg).to(torch.float64)
    m.eval()  # no dropout; gradients still flow
    return m


@pytest.fixture(scope="module")
def model():
    return _make_model(tie=False)


def _batch(left_pad=(0, 3, 5), right_pad=(0, 2, 0)):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    for i, (lp, rp) in enumerate(zip(left_pad, right_pad, strict=True)):
        mask[i, :lp] = 0
        if rp:
            mask[i, L - rp :] = 0
    ids = ids.masked_fill(mask == 0, 0)  # pad id 0
    return ids, mask


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 21, 1024])
def test_completion_matches_naive(model, chunk_size, temperature):
    ids, mask = _batch()
    resp_mask = mask[:, L - R :].double()
    g = torch.Generator().manual_seed(2)
    w_lp = torch.randn(B, R, generator=g, dtype=torch.float64)
    w_en = torch.randn(B, R, generator=g, dtype=torch.float64)

    lp_n, en_n = completion_log_probs(model, ids, mask, R, temperature=temperature, naive=True)
    loss_n = (lp_n * w_lp * resp_mask).sum() + (en_n * w_en * resp_mask).sum()
    grads_n = _grads(model, loss_n)

    lp_c, en_c = completion_log_probs(
        model, ids, mask, R, temperature=temperature, chunk_size=chunk_size
    )
    assert lp_c.shape == (B, R) and en_c.shape == (B, R)
    assert torch.isfinite(lp_c).all() and torch.isfinite(en_c).all()
    torch.testing.assert_close(lp_c, lp_n, atol=1e-5, rtol=0)
    torch.testing.assert_close(en_c, en_n, atol=1e-5, rtol=0)
    loss_c = (lp_c * w_lp * resp_mask).sum() + (en_c * w_en * resp_mask).sum()
    grads_c = _grads(model, loss_c)
    n_checked = 0
    for gc, gn in zip(grads_c, grads_n, strict=True):
        if gn is None:
            assert gc is None
            continue
        torch.testing.assert_close(gc, gn, atol=1e-5, rtol=0)
        n_checked += 1
    assert n_checked == len(list(model.parameters()))


def test_tied_embeddings():
    """Qwen3-0.6B ties lm_head to embed_tokens: both gradient paths must accumulate."""
    m = _make_model(tie=True)
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    ids, mask = _batch()
    lp_n, en_n = completion_log_probs(m, ids, mask, R, naive=True)
    lp_c, en_c = completion_log_probs(m, ids, mask, R, chunk_size=5)
    torch.testing.assert_close(lp_c, lp_n, atol=1e-5, rtol=0)
    wt = mask[:, L - R :].double()
    gn = _grads(m, (lp_n * wt).sum() + (en_n * wt).sum())
    gc = _grads(m, (lp_c * wt).sum() + (en_c * wt).sum())
    for a, c in zip(gc, gn, strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


def test_left_padding_does_not_shift_positions(model):
    """A left-padded row scores its tokens exactly as the same row without padding."""
    ids, mask = _batch(left_pad=(0, 4, 0), right_pad=(0, 0, 0))
    lp, en = completion_log_probs(model, ids, mask, R, chunk_size=8)
    row = ids[1:2, 4:]
    lp1, en1 = completion_log_probs(model, row, torch.ones_like(row), R, chunk_size=8)
    torch.testing.assert_close(lp[1:2], lp1, atol=1e-10, rtol=0)
    torch.testing.assert_close(en[1:2], en1, atol=1e-10, rtol=0)
    pos = position_ids_from_attention_mask(mask)
    assert pos[1, 4].item() == 0 and pos[1, -1].item() == L - 5


def test_no_entropy_and_logprob_only_grad(model):
    ids, mask = _batch()
    lp, en = completion_log_probs(model, ids, mask, R, compute_entropy=False, chunk_size=6)
    assert en is None
    lp_n, _ = completion_log_probs(model, ids, mask, R, naive=True, compute_entropy=False)
    torch.testing.assert_close(lp, lp_n, atol=1e-5, rtol=0)
    for gc, gn in zip(_grads(model, lp.sum()), _grads(model, lp_n.sum()), strict=True):
        torch.testing.assert_close(gc, gn, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 7, 10, 64])
def test_from_hidden_with_bias_and_entropy_only_grad(chunk_size):
    torch.manual_seed(3)
    h = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(40, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 40, (2, 5))
    lp, en = token_log_probs_from_hidden(
        h, w, t, temperature=1.3, chunk_size=chunk_size, lm_head_bias=b
    )
    lp_n, en_n = _naive(h, w, t, 1.3, b)
    torch.testing.assert_close(lp, lp_n, atol=1e-10, rtol=0)
    torch.testing.assert_close(en, en_n, atol=1e-10, rtol=0)
    wt = torch.randn(2, 5, dtype=torch.float64)
    for out, ref in ((en, en_n), (lp, lp_n)):
        gc = torch.autograd.grad((out * wt).sum(), (h, w, b), retain_graph=True)
        gn = torch.autograd.grad((ref * wt).sum(), (h, w, b), retain_graph=True)
        for a, c in zip(gc, gn, strict=True):
            torch.testing.assert_close(a, c, atol=1e-10, rtol=0)


def test_gradcheck():
    torch.manual_seed(4)
    h = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (7,))
    assert torch.autograd.gradcheck(
        lambda h, w: token_log_probs_from_hidden(h, w, t, temperature=0.8, chunk_size=3), (h, w)
    )


def test_low_precision_inputs_upcast():
    torch.manual_seed(5)
    h = torch.randn(4, 9, 32).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(300, 32) * 0.2).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 300, (4, 9))
    lp, en = token_log_probs_from_hidden(h, w, t, chunk_size=5)
    assert lp.dtype == torch.float32 and en.dtype == torch.float32
    lp_n, en_n = _naive(h.float(), w.float(), t)
    # only the bf16 matmul rounding separates them
    torch.testing.assert_close(lp, lp_n.float(), atol=5e-2, rtol=0)
    torch.testing.assert_close(en, en_n.float(), atol=5e-2, rtol=0)
    lp.sum().backward()
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    assert torch.isfinite(h.grad.float()).all() and torch.isfinite(w.grad.float()).all()


def test_bad_arguments():
    h = torch.randn(2, 3, 4)
    w = torch.randn(10, 4)
    t = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError):
        token_log_probs_from_hidden(h, w, t, chunk_size=0)
    with pytest.raises(ValueError):
        token_log_probs_from_hidden(h, w, t, temperature=0.0)
    with pytest.raises(ValueError):
        token_log_probs_from_hidden(h, w, t[:, :2])
