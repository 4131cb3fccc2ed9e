"""The full next-item cross-entropy, computed in row chunks from the final hidden states.

The stock causal-LM loss builds the ``(batch, length, vocab)`` logits, copies them to float32,
takes ``log_softmax`` (one pass that writes another logits-sized tensor), gathers the targets and,
on the way back, fills a zero tensor of that size, scatters into it, runs ``log_softmax``'s
backward (another pass) and only then the two matmuls. On a CPU at width 64 that was half of a
GPT-2 training step (``scripts/bench_peers.py``; docs/performance.md), all of it memory traffic.

:class:`FusedSoftmax` computes the same loss over the same vocabulary without those tensors: for
a chunk of labelled positions at a time (sized to stay in cache) it forms the chunk's logits,
keeps only their log-sum-exp and the target's logit, and in the backward recomputes the chunk's
logits, turns them into ``softmax - onehot`` in place and feeds the two matmuls. Positions
without a label never reach the output layer. The loss is the stock one up to float rounding
(tested against ``GPT2LMHeadModel``'s own loss and gradients); ``matmul_dtype=torch.bfloat16``
(the recipe's ``bf16: true``) runs the two output matmuls in bfloat16 with float32 accumulation
of the softmax, where this CPU's bf16 matmul is ~10x its float32 one.

Masked-item models (BERT4Rec) gain most: ``BertForMaskedLM`` runs its head (transform and
decoder) over every position, while only the masked 20-60% carry a label. Under
:func:`hidden_states_forward` the head is skipped in the forward, and the loss applies the
transform and the decoder to the labelled rows only (``shift=False``): the cloze loss of
``BertForMaskedLM`` itself, up to float rounding (tested against it).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from behavior_lm.data.collators import IGNORE_INDEX
from behavior_lm.training.sampled_softmax import mlm_transform, output_features

CHUNK_ELEMENTS = 1 << 19   # logits per chunk: 2 MB of float32, about one core's L2


def chunk_rows(vocab: int) -> int:
    """Rows per chunk for a ``vocab``-wide output layer (at least 16)."""
    return max(16, CHUNK_ELEMENTS // max(vocab, 1))


class ChunkedSoftmaxCrossEntropy(torch.autograd.Function):
    """``sum_i -log softmax(h_i W^T + b)[t_i]`` over rows, chunk by chunk (module docstring).

    With a bfloat16 ``matmul_dtype`` and no bias the logits stay bfloat16: ``log_softmax`` (forward)
    and ``softmax`` (backward) read them in one fused kernel each, accumulating in float32, instead
    of a float32 copy followed by separate max, subtract, exp and sum passes over it. That is the
    same rounding of the logits (the bf16 matmul's output) as before; the loss value gains the
    bf16 rounding of each log-probability (about 0.4% of one target's term, unbiased, so the sum
    moves by ~1e-5 relative) and the softmax that feeds the gradient is bf16, as the matmul that
    consumes it always was. It is 0.6x the backward time of the float32 route (docs/performance.md).

    ``smoothing`` (epsilon) is transformers' ``LabelSmoother``: each row's term is
    ``(1 - eps) * -log p[t] + eps * mean_c(-log p[c])`` over the whole vocabulary, so its gradient
    with respect to the logits is ``p - (1 - eps) * onehot - eps / V``: one more in-cache pass per chunk
    instead of the stock smoother's ``(batch, length, vocab)`` log-probabilities.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, matmul_dtype: torch.dtype, smoothing: float = 0.0) -> torch.Tensor:
        rows, count = chunk_rows(weight.shape[0]), hidden.shape[0]
        # every chunk, the last included, has `rows` rows: zero rows pad the last one and are left
        # out of the sums. A bfloat16 matmul is a oneDNN primitive built and cached per shape, and
        # the row count differs in every batch (docs/performance.md, "Memory of long runs").
        pad = -count % rows
        h, w = F.pad(hidden.to(matmul_dtype), (0, 0, 0, pad)), weight.to(matmul_dtype)
        targets = F.pad(targets, (0, pad))
        low = _low_precision_softmax(matmul_dtype, bias)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        lse = torch.empty(0 if low else h.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, count, rows):
            end, valid = start + rows, min(rows, count - start)
            chunk_targets = targets[start:start + valid, None]
            if low:
                logp = torch.log_softmax(h[start:end] @ w.T, dim=1)[:valid]
                total -= (1.0 - smoothing) * logp.gather(1, chunk_targets).float().sum()
                if smoothing:
                    total -= smoothing * logp.mean(1, dtype=torch.float32).sum()
                continue
            logits = (h[start:end] @ w.T).float()
            if bias is not None:
                logits += bias.float()
            lse[start:end] = torch.logsumexp(logits, dim=1)
            logits = logits[:valid]
            total += (lse[start:start + valid] - (1.0 - smoothing) * logits.gather(1, chunk_targets).squeeze(1)).sum()
            if smoothing:
                total -= smoothing * logits.mean(1).sum()
        ctx.save_for_backward(h, w, bias, targets, lse)
        ctx.hidden_dtype, ctx.weight_dtype, ctx.low, ctx.smoothing = hidden.dtype, weight.dtype, low, smoothing
        ctx.count = count
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        h, w, bias, targets, lse = ctx.saved_tensors
        rows, count = chunk_rows(w.shape[0]), ctx.count
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        grad_b = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b and bias is not None else None
        for start in range(0, count, rows):
            end, valid = start + rows, min(rows, count - start)
            if ctx.low:
                probs = torch.softmax(h[start:end] @ w.T, dim=1)           # bf16 out, float32 inside
            else:
                logits = (h[start:end] @ w.T).float()
                if bias is not None:
                    logits += bias.float()
                probs = logits.sub_(lse[start:end, None]).exp_()          # softmax, in place
            probs[torch.arange(probs.shape[0], device=probs.device), targets[start:end]] -= 1.0 - ctx.smoothing
            if ctx.smoothing:
                probs -= ctx.smoothing / probs.shape[1]
            probs[valid:] = 0.0                                            # the padding rows
            if grad_b is not None:
                grad_b += probs.sum(0)
            chunk = probs.to(w.dtype)                                      # d (summed loss) / d logits
            if need_h:
                grad_h[start:end] = chunk @ w
            if need_w:
                if chunk.dtype == torch.float32:
                    grad_w.addmm_(chunk.T, h[start:end])
                else:
                    grad_w += (chunk.T @ h[start:end]).float()
        scale = grad_output.float()                    # applied once to the (small) gradients
        return (grad_h[:count].mul_(scale).to(ctx.hidden_dtype) if need_h else None,
                grad_w.mul_(scale).to(ctx.weight_dtype) if need_w else None,
                grad_b.mul_(scale).to(bias.dtype) if grad_b is not None else None, None, None, None)


def _low_precision_softmax(matmul_dtype: torch.dtype, bias: torch.Tensor | None) -> bool:
    """Whether the softmax reads the bf16 logits directly (:class:`ChunkedSoftmaxCrossEntropy`).
    A bias (BERT4Rec's item prior) is added in float32 first: in bf16 the sum would be rounded
    a second time, at the bias's magnitude."""
    return matmul_dtype != torch.float32 and bias is None


@dataclass
class FusedSoftmax:
    """The full softmax cross-entropy of a causal model, from its final hidden states (module docstring).

    Args:
        matmul_dtype: dtype of the output-layer matmuls (float32, or bfloat16 under ``bf16: true``);
            the softmax and its sums are always float32.
        label_smoothing: the recipe's ``label_smoothing_factor``, as transformers' ``LabelSmoother``.
    """

    matmul_dtype: torch.dtype = torch.float32
    label_smoothing: float = 0.0

    def loss(self, model: PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor, step: int = 0,
             num_items_in_batch: torch.Tensor | int | None = None, shift: bool = True) -> torch.Tensor:
        """Summed over labelled positions and divided by ``num_items_in_batch`` when the Trainer
        gives it (as the stock losses normalise), else by the count here. ``hidden``: ``(B, L, H)``;
        ``labels``: ``(B, L)``, ``-100`` where nothing is predicted; ``shift``: causal labels;
        ``step`` is unused (the sampled softmax's signature)."""
        if shift:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        where = labels != IGNORE_INDEX
        h = output_features(model, hidden[where])
        out = model.get_output_embeddings()
        total = ChunkedSoftmaxCrossEntropy.apply(h, out.weight, getattr(out, "bias", None), labels[where],
                                                 self.matmul_dtype, self.label_smoothing)
        count = num_items_in_batch if num_items_in_batch is not None else where.sum().clamp(min=1)
        return total / count


class _HeadSkipped(nn.Module):
    """Stands in for a masked-LM head during :func:`hidden_states_forward`: no logits at all."""

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return sequence_output[..., :0]


@contextmanager
def hidden_states_forward(model: PreTrainedModel) -> Iterator[dict]:
    """Keyword arguments for a forward that returns the final hidden states and (almost) no logits.

    Causal models take ``logits_to_keep=1``. ``BertForMaskedLM`` has no such argument, so its
    ``cls`` head is swapped out for the duration of the call (and always restored): the forward
    still goes through the model object the Trainer holds (DDP's hooks see it), and the loss then
    runs the real head on the labelled rows (``output_features`` and the decoder)."""
    if mlm_transform(model) is None:
        yield {"output_hidden_states": True, "logits_to_keep": 1}
        return
    head = model.cls
    model.cls = _HeadSkipped()
    try:
        yield {"output_hidden_states": True}
    finally:
        model.cls = head
