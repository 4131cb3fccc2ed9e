"""The CPU dropout masks of behavior_lm/models/fast_dropout.py: Bernoulli masks with the right rate,
fixed by torch's seed; the written-out attention equals SDPA for every mask form and every model
type (padding on either side); the Trainer switches a model to them without changing what it saves."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from behavior_lm.arguments import ModelArguments
from behavior_lm.models.auto import build_model
from behavior_lm.models.fast_dropout import (ATTENTION, FastDropout, fast_dropout, keep_mask, math_attention,
                                             use_fast_dropout)
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer
from tests.conftest import cpu_trainer, padded_histories

# the written-out attention with dropout off, under a name of its own: what the dropout path computes
MATH_TEST = "behavior_lm_math_test"
AttentionInterface.register(MATH_TEST, lambda module, q, k, v, mask, dropout=0.0, **kw:
                            math_attention(module, q, k, v, mask, dropout=0.0, **kw))
AttentionMaskInterface.register(MATH_TEST, sdpa_mask)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_rate_and_seed(p):
    n = 1_000_000
    torch.manual_seed(0)
    first = keep_mask((1000, 1000), p)
    second = keep_mask((1000, 1000), p)
    rate = first.float().mean().item()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)      # Bernoulli(1 - p), 5 sigma
    assert not torch.equal(first, second)                              # a fresh mask per call
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1000, 1000), p), first)              # torch's seed fixes it
    # no dependence between neighbours (a counter bug would repeat or correlate blocks)
    both = (first[:, :-1] & first[:, 1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 0.005


def test_fast_dropout_is_inverted_dropout_with_its_mask():
    x = torch.randn(64, 50, 16, requires_grad=True)
    torch.manual_seed(3)
    y = fast_dropout(x, 0.25, training=True)
    torch.manual_seed(3)
    keep = keep_mask(x.shape, 0.25)
    assert torch.allclose(y, torch.where(keep, x / 0.75, torch.zeros_like(x)), atol=1e-6)
    y.sum().backward()
    assert torch.allclose(x.grad, keep.float() / 0.75)
    assert torch.equal(fast_dropout(x, 0.25, training=False), x)       # eval: identity
    assert torch.equal(fast_dropout(x, 0.0, training=True), x)
    module = FastDropout(0.25).eval()
    assert torch.equal(module(x), x)


def _qkv(batch=3, heads=2, length=7, dim=8, kv_heads=None):
    g = torch.Generator().manual_seed(0)
    kv = kv_heads or heads
    return (torch.randn(batch, heads, length, dim, generator=g), torch.randn(batch, kv, length, dim, generator=g),
            torch.randn(batch, kv, length, dim, generator=g))


@pytest.mark.parametrize("form", ["causal", "bidirectional", "bool", "additive", "gqa"])
def test_math_attention_equals_sdpa(form):
    module = nn.Module()
    module.is_causal = form != "bidirectional"
    q, k, v = _qkv(kv_heads=1 if form == "gqa" else None)
    if form == "gqa":
        module.num_key_value_groups = 2
    mask = None
    if form in ("bool", "additive"):
        lengths = torch.tensor([7, 4, 2])
        real = torch.arange(7)[None, :] < lengths[:, None]
        mask = (real[:, None, None, :] & torch.ones(7, 7, dtype=torch.bool).tril()).expand(3, 1, 7, 7)
        mask = mask | torch.eye(7, dtype=torch.bool)        # every row sees itself: no empty rows
        if form == "additive":
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    module.training = False
    ours, _ = math_attention(module, q, k, v, mask)
    stock, _ = sdpa_attention_forward(module, q, k, v, mask)
    assert ours.shape == stock.shape == (3, 7, 2, 8)
    assert torch.allclose(ours, stock, atol=1e-5)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([str(i) for i in range(12)], max_length=16)


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "bert4rec"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_models_on_the_written_out_attention_equal_sdpa(model_type, side, tok):
    """The masks sdpa_mask builds for our implementation reach the written-out attention intact:
    every real position's output equals stock SDPA's, with padding on either side."""
    args = ModelArguments(model_type=model_type, hidden_size=16, num_layers=2, num_heads=2, dropout=0.0,
                          attention_dropout=0.3)
    torch.manual_seed(0)
    model = build_model(args, tok, 16).eval()
    assert model.config._attn_implementation == "sdpa"
    input_ids, attention = padded_histories(tok, side)
    with torch.no_grad():
        stock = model(input_ids=input_ids, attention_mask=attention).logits
        model.set_attn_implementation(MATH_TEST)
        written = model(input_ids=input_ids, attention_mask=attention).logits
        model.set_attn_implementation(ATTENTION)                       # eval: delegates to SDPA
        ours = model(input_ids=input_ids, attention_mask=attention).logits
    real = attention.bool()
    assert torch.allclose(written[real], stock[real], atol=1e-5)
    assert torch.equal(ours, stock)


def test_trainer_switches_the_model_and_training_uses_the_fast_masks(tok, tmp_path):
    args = ModelArguments(model_type="gpt2", hidden_size=16, num_layers=1, num_heads=2, dropout=0.2)
    model = build_model(args, tok, 16)
    saved_keys = set(model.state_dict())
    trainer = cpu_trainer(model, args, tok, tmp_path, fast_dropout=True)
    assert not [m for m in model.modules() if type(m) is nn.Dropout]
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == 4   # embedding, attn, residual, mlp
    assert model.config._attn_implementation == ATTENTION
    calls = []
    original = keep_mask.__globals__["keep_mask"]

    def counting(shape, p):
        calls.append(tuple(shape))
        return original(shape, p)

    keep_mask.__globals__["keep_mask"] = counting
    try:
        trainer.train()
    finally:
        keep_mask.__globals__["keep_mask"] = original
    # 2 steps x (embedding + attention probabilities + 2 residual/MLP) masks, all from the fast path
    assert len(calls) == 2 * 4
    assert any(len(s) == 4 for s in calls)                                # (B, H, L, L): attention
    assert set(model.state_dict()) == saved_keys
    assert "_attn_implementation" not in model.config.to_dict()
    assert use_fast_dropout(model) == 0                                   # idempotent
