"""Llama's RMSNorm and rotary embedding in fewer passes (behavior_lm/models/fused_llama.py): the same
values and gradients as transformers' own, float32 and bf16, padding on either side; the Trainer
switches a Llama to them without changing what it saves."""
from __future__ import annotations

import pytest
import torch
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from behavior_lm.arguments import ModelArguments
from behavior_lm.models.auto import build_model
from behavior_lm.models.fused_llama import (ORIGINAL_APPLY_ROTARY_POS_EMB, FusedLlamaRMSNorm,
                                            fused_apply_rotary_pos_emb, use_fused_llama)
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer
from tests.conftest import cpu_trainer, padded_histories


@pytest.fixture
def restore_rotary():
    """Tests that compare against transformers' rotary put the process's function back afterwards."""
    before = modeling_llama.apply_rotary_pos_emb
    yield
    modeling_llama.apply_rotary_pos_emb = before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_transformers(dtype):
    torch.manual_seed(0)
    stock = LlamaRMSNorm(24, eps=1e-6)
    stock.weight.data += 0.3 * torch.randn(24)
    fused = LlamaRMSNorm(24, eps=1e-6)
    fused.load_state_dict(stock.state_dict())
    fused.__class__ = FusedLlamaRMSNorm
    x = (3 * torch.randn(5, 7, 24)).to(dtype)
    grad = torch.randn(5, 7, 24)
    outputs, grads = [], []
    for norm in (stock, fused):
        leaf = x.clone().requires_grad_()
        out = norm(leaf)
        (out.float() * grad).sum().backward()
        outputs.append(out)
        grads.append((leaf.grad, norm.weight.grad))
    assert outputs[0].dtype == outputs[1].dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(outputs[1].float(), outputs[0].float(), rtol=tol, atol=tol)
    torch.testing.assert_close(grads[1][0].float(), grads[0][0].float(), rtol=tol, atol=tol)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("positions", ["shared", "per_row"])
def test_rotary_matches_transformers(dtype, positions):
    """Query and key as the attention lays them out (a transposed view), cos/sin for shared or
    per-row (left-padded) positions; bf16 queries with float32 cos/sin promote as the original."""
    torch.manual_seed(0)
    batch, heads, length, dim = 3, 2, 9, 8
    pos = torch.arange(length)[None].expand(batch, length) - (torch.arange(batch)[:, None] if positions == "per_row" else 0)
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    freqs = pos[..., None].float() * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    q0 = torch.randn(batch, length, heads, dim).to(dtype).transpose(1, 2)
    k0 = torch.randn(batch, length, heads, dim).to(dtype).transpose(1, 2)
    gq, gk = torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim)
    results = []
    for fn in (ORIGINAL_APPLY_ROTARY_POS_EMB, fused_apply_rotary_pos_emb):
        q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
        qe, ke = fn(q, k, cos, sin)
        ((qe.float() * gq).sum() + (ke.float() * gk).sum()).backward()
        results.append((qe, ke, q.grad, k.grad))
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    for ours, stock in zip(results[1], results[0]):
        assert ours.dtype == stock.dtype and ours.shape == stock.shape
        torch.testing.assert_close(ours.float(), stock.float(), rtol=tol, atol=tol)


def test_rotary_falls_back_when_cos_needs_a_gradient():
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    cos = torch.randn(2, 5, 4, requires_grad=True)
    sin = torch.randn(2, 5, 4)
    qe, _ = fused_apply_rotary_pos_emb(q, k, cos, sin)
    qe.sum().backward()
    assert cos.grad is not None                     # the original ran: cos got its gradient


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([str(i) for i in range(12)], max_length=16)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("bf16", [False, True])
def test_llama_with_fused_ops_equals_stock(side, bf16, tok, restore_rotary):
    """Same logits at every real position and the same parameter gradients, padding on either side."""
    args = ModelArguments(model_type="llama", hidden_size=16, num_layers=2, num_heads=2, dropout=0.0)
    torch.manual_seed(0)
    stock = build_model(args, tok, 16)
    fused = build_model(args, tok, 16)
    fused.load_state_dict(stock.state_dict())
    assert use_fused_llama(fused) == 5               # 2 per block + the final norm
    input_ids, attention = padded_histories(tok, side)
    real = attention.bool()
    results = []
    for model, rotary in ((stock, ORIGINAL_APPLY_ROTARY_POS_EMB), (fused, fused_apply_rotary_pos_emb)):
        modeling_llama.apply_rotary_pos_emb = rotary
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=input_ids, attention_mask=attention).logits
        logits.float()[real].logsumexp(-1).sum().backward()
        results.append((logits.float()[real], {n: p.grad.clone() for n, p in model.named_parameters()}))
    tol = 1e-5 if not bf16 else 3e-2
    torch.testing.assert_close(results[1][0], results[0][0], rtol=tol, atol=tol)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=tol, atol=tol, msg=name)


def test_trainer_switches_a_llama_without_changing_what_it_saves(tok, tmp_path, restore_rotary):
    args = ModelArguments(model_type="llama", hidden_size=16, num_layers=1, num_heads=2, dropout=0.0,
                          attention_dropout=0.1)
    model = build_model(args, tok, 16)
    saved_keys = set(model.state_dict())
    trainer = cpu_trainer(model, args, tok, tmp_path, fused_llama=True)
    assert sum(type(m) is FusedLlamaRMSNorm for m in model.modules()) == 3
    assert modeling_llama.apply_rotary_pos_emb is fused_apply_rotary_pos_emb
    trainer.train()
    assert set(model.state_dict()) == saved_keys
    model.save_pretrained(tmp_path / "saved")
    reloaded = type(model).from_pretrained(tmp_path / "saved")
    assert not any(type(m) is FusedLlamaRMSNorm for m in reloaded.modules())   # a loaded model is stock
    gpt2 = build_model(ModelArguments(model_type="gpt2", hidden_size=16, num_layers=1, num_heads=2), tok, 16)
    assert use_fused_llama(gpt2) == 0
