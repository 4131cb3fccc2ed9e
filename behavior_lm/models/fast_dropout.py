"""Dropout masks from a counter-based generator, for training on CPU.

Why: on CPU, ``torch.nn.functional.dropout`` draws its mask with ``bernoulli_`` from the
Mersenne-Twister generator, one element at a time on one thread. At the sizes of these models
(width 64, a few hundred thousand activations per call, seven calls a GPT-2 step) that draw was
16% of a bf16 GPT-2 training step in a profile (docs/performance.md). NumPy's PCG64 fills the same
number of 16-bit integers several times faster, so the mask here is ``uint16 draw >= p * 2**16``:
the same Bernoulli(1 - p) keep mask up to a quantisation of ``p`` to 1/65536, scaled by ``1/(1-p)``
as inverted dropout is.

Reproducibility: each mask's PCG64 stream is seeded by one draw from torch's default generator,
so ``set_seed`` (and the RNG state a resumed checkpoint restores) fixes every mask, as it does for
torch's own dropout. Only training on CPU takes this path: in eval mode, at ``p == 0`` and on other
devices (whose generators are fast) the stock functions run.

Two pieces, switched on for a training run by :func:`use_fast_dropout` (the Trainer calls it when
``fast_dropout: true``, the default):

- :class:`FastDropout` replaces each ``nn.Dropout`` module (GPT-2's embedding, residual and MLP
  dropout, BERT's hidden dropout, the RNNs' embedding and output dropout);
- the attention implementation ``behavior_lm_sdpa`` is PyTorch SDPA (transformers' own
  ``sdpa_attention_forward``) except when attention dropout is active on CPU, where SDPA would take
  its math path anyway (``bmm``, softmax, ``bernoulli_``): there the same math runs with the fast
  mask. Masks are built by transformers' ``sdpa_mask`` for it, so padding and causality are SDPA's.
  The name is not saved in ``config.json``: a loaded model gets the default implementation.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "behavior_lm_sdpa"
_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """Bool ``shape`` mask, True with probability ``1 - p`` (``p`` rounded to 1/65536)."""
    seed = int(torch.randint(0, 2**62, (1,)).item())         # torch's generator decides every mask
    n = 1
    for size in shape:
        n *= int(size)
    draws = np.random.Generator(np.random.PCG64(seed)).integers(0, _LEVELS, n, dtype=np.uint16)
    # torch has few uint16 kernels: compare as int16 with the threshold shifted by 2**15
    signed = torch.from_numpy(draws.view(np.int16)).view(tuple(shape))
    return signed >= round(p * _LEVELS) - (_LEVELS // 2)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the mask from :func:`keep_mask` on CPU."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    if p >= 1.0:
        return x * 0.0
    scale = torch.tensor(1.0 / (1.0 - p), dtype=x.dtype)
    return x * (keep_mask(x.shape, p).to(x.dtype) * scale)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training mask comes from :func:`keep_mask` (same ``p``, same role)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Dropout's name
        if self.inplace:
            return super().forward(input)
        return fast_dropout(input, self.p, self.training)


def math_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Softmax attention written out, with :func:`fast_dropout` on the probabilities.

    Follows ``sdpa_attention_forward``'s conventions: ``(B, H, L, D)`` inputs, a boolean (True =
    attend) or additive mask from ``sdpa_mask``, or none with ``is_causal``; output ``(B, L, H, D)``."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_length, kv_length = query.shape[2], key.shape[2]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = q_length > 1 and attention_mask is None and is_causal
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    low = torch.finfo(scores.dtype).min
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, low)
        else:
            scores = scores + attention_mask
    elif is_causal:
        # SDPA's is_causal is top-left aligned: query i sees keys 0..i
        future = torch.ones(q_length, kv_length, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, low)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    probs = fast_dropout(probs, dropout, module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def behavior_lm_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """SDPA, except attention dropout on CPU: that runs :func:`math_attention` with the fast mask."""
    if dropout > 0.0 and module.training and query.device.type == "cpu" and kwargs.get("position_bias") is None:
        return math_attention(module, query, key, value, attention_mask, dropout=dropout, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, **kwargs)


AttentionInterface.register(ATTENTION, behavior_lm_sdpa)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_fast_dropout(model: nn.Module) -> int:
    """Switch ``model`` to the fast masks in place; returns how many dropout modules were swapped.

    ``nn.Dropout`` modules become :class:`FastDropout` (no parameters or buffers: state dicts and
    ``config.json`` are unchanged); models on SDPA attention switch to ``behavior_lm_sdpa``."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p, child.inplace))
                swapped += 1
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(ATTENTION)
    return swapped
