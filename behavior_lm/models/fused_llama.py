"""RMSNorm and rotary position embedding for Llama-style models in fewer memory passes, for CPU training.

Why: at the widths these models train (64 wide, 128 x 50 activations), the elementwise ops of a
Llama block are memory-bound on CPU. transformers' ``LlamaRMSNorm`` writes five intermediates
(``pow``, ``mean``, ``rsqrt``, two ``mul``) and autograd replays each in its backward;
``apply_rotary_pos_emb`` builds ``rotate_half`` with a ``neg`` and a ``cat`` for the query and the
key before three more passes. A profile of a bf16 Llama step at ML-100K size (``bench_peers.py
--profile``) put those products above every matmul together, but the profiler's per-op overhead
inflates such small ops: measured on CPU time the functions here make a step 1.04x faster
(``scripts/bench_fused_llama.py``, docs/performance.md). They compute the same values:

- :class:`RMSNormFunction`: ``rstd`` from one ``vector_norm`` pass, the normalised input saved for
  the backward, whose input gradient is ``rstd * (g*w - x_hat * mean(g*w*x_hat))`` in three passes;
- :class:`RotaryFunction`: both halves written straight into the output (``x1*c1 - x2*s1`` and
  ``x2*c2 + x1*s2``, i.e. ``x*cos + rotate_half(x)*sin``) and the transposed rotation as the backward.

Results equal the reference up to float rounding (tests/test_fused_llama.py, float32 and bf16
autocast, left and right padding). :func:`use_fused_llama` switches a model to them: its
``LlamaRMSNorm`` modules change class in place (same parameters, state dict and ``config.json``),
and ``transformers.models.llama.modeling_llama.apply_rotary_pos_emb`` is replaced for the process
(as Liger-Kernel patches the same function on GPU) by :func:`fused_apply_rotary_pos_emb`, which
falls back to the original off CPU, for gradients into ``cos``/``sin``, or an unusual broadcast.
The Trainer calls it for CPU training when ``fused_llama: true`` (the default).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaRMSNorm

ORIGINAL_APPLY_ROTARY_POS_EMB = modeling_llama.apply_rotary_pos_emb


class RMSNormFunction(torch.autograd.Function):
    """``weight * (x / sqrt(mean(x^2) + eps))`` computed in float32 as ``LlamaRMSNorm`` does."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        width = x.shape[-1]
        x32 = x.float()
        rstd = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(width).add_(eps).rsqrt_()
        x_hat = x32 * rstd
        ctx.save_for_backward(x_hat, rstd, weight)
        ctx.input_dtype = x.dtype
        return weight * x_hat.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x_hat, rstd, weight = ctx.saved_tensors
        width = x_hat.shape[-1]
        grad32 = grad.float()
        grad_weight = None
        if ctx.needs_input_grad[1]:
            # the forward multiplied the weight by x_hat rounded to the input dtype: so does its gradient
            rounded = x_hat if ctx.input_dtype == x_hat.dtype else x_hat.to(ctx.input_dtype).float()
            grad_weight = (grad32.reshape(-1, width) * rounded.reshape(-1, width)).sum(0).to(weight.dtype)
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_x_hat = grad32 * weight.float()
            mean_dot = torch.linalg.vecdot(grad_x_hat, x_hat, dim=-1).unsqueeze(-1).div_(width)
            grad_input = torch.addcmul(grad_x_hat, x_hat, mean_dot, value=-1).mul_(rstd).to(ctx.input_dtype)
        return grad_input, grad_weight, None


class FusedLlamaRMSNorm(LlamaRMSNorm):
    """``LlamaRMSNorm`` through :class:`RMSNormFunction` (same parameters and state dict)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype,
            inverse: bool = False) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` (or its transpose, ``inverse``) written half by half."""
    half = x.shape[-1] // 2
    x = x.to(dtype)   # one conversion pass instead of mixed-dtype products (slow on CPU)
    x1, x2 = x[..., :half], x[..., half:]
    c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
    out = torch.empty_like(x, dtype=dtype)   # x's memory layout: the passes below then stream it in order
    o1, o2 = out[..., :half], out[..., half:]
    if inverse:   # gradient: g1*c1 + g2*s2, g2*c2 - g1*s1
        torch.mul(x1, c1, out=o1).addcmul_(x2, s2)
        torch.mul(x2, c2, out=o2).addcmul_(x1, s1, value=-1)
    else:         # x1*c1 - x2*s1, x2*c2 + x1*s2
        torch.mul(x1, c1, out=o1).addcmul_(x2, s1, value=-1)
        torch.mul(x2, c2, out=o2).addcmul_(x1, s2)
    return out


class RotaryFunction(torch.autograd.Function):
    """The rotary embedding of the query and the key, ``cos``/``sin`` constants (no gradient)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(cos, sin)
        ctx.dtypes = (q.dtype, k.dtype)
        return (_rotate(q, cos, sin, torch.result_type(q, cos)),
                _rotate(k, cos, sin, torch.result_type(k, cos)))

    @staticmethod
    def backward(ctx: Any, grad_q: torch.Tensor, grad_k: torch.Tensor) -> tuple[Any, Any, None, None]:
        cos, sin = ctx.saved_tensors
        q_dtype, k_dtype = ctx.dtypes
        rotated_q = _rotate(grad_q, cos, sin, grad_q.dtype, inverse=True).to(q_dtype) if grad_q is not None else None
        rotated_k = _rotate(grad_k, cos, sin, grad_k.dtype, inverse=True).to(k_dtype) if grad_k is not None else None
        return rotated_q, rotated_k, None, None


def fused_apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                               unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``modeling_llama.apply_rotary_pos_emb`` through :class:`RotaryFunction` where it applies."""
    cos_b, sin_b = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    usable = (q.device.type == "cpu" and not (cos.requires_grad or sin.requires_grad)
              and q.shape[-1] % 2 == 0 and q.shape[-1] == k.shape[-1] == cos.shape[-1]
              and torch.broadcast_shapes(q.shape, cos_b.shape) == q.shape
              and torch.broadcast_shapes(k.shape, cos_b.shape) == k.shape)
    if not usable:
        return ORIGINAL_APPLY_ROTARY_POS_EMB(q, k, cos, sin, unsqueeze_dim)
    return RotaryFunction.apply(q, k, cos_b, sin_b)


def use_fused_llama(model: nn.Module) -> int:
    """Switch ``model``'s ``LlamaRMSNorm`` modules to :class:`FusedLlamaRMSNorm` in place and, when it
    has any (it is a Llama), the process's Llama rotary embedding to :func:`fused_apply_rotary_pos_emb`.
    Returns how many norms were switched; a model without them is left alone."""
    switched = 0
    for module in model.modules():
        if type(module) is LlamaRMSNorm:
            module.__class__ = FusedLlamaRMSNorm
            switched += 1
    if switched:
        modeling_llama.apply_rotary_pos_emb = fused_apply_rotary_pos_emb
    return switched
