"""Sampled softmax with log-Q correction: the next-item cross-entropy over the target and ``K``
negatives instead of the whole catalogue, for catalogues too large for a full softmax.

Each optimizer step draws one set of ``K`` negatives from a proposal ``Q`` over the item tokens
(uniform: without replacement; popularity: with replacement) and shares it across the batch, so the output layer costs ``O(N * K)`` instead of
``O(N * V)`` and the model's ``(batch, length, vocab)`` logits are never built (the forward is asked
for one position of logits and the final hidden states). The loss is the importance-sampling
estimate of the full cross-entropy (Bengio & Senecal 2008; Jean et al. 2015): the target's logit is
exact, each negative's logit is corrected by ``- log(K * Q(item))`` (its expected count among the
draws; the log-Q correction), so that the negatives' ``sum exp`` estimates the rest of the
partition function and the loss tends to the full softmax's as ``K`` grows, whatever the proposal.
A negative that is the row's own target ("accidental hit") is left out of that row. The few
non-item tokens (behaviors, specials) are scored exactly in every row, uncorrected, so that a
multi-behavior stream's behavior targets keep their exact softmax.

``softmax: sampled`` serves causal models (GPT-2, Llama, GRU/LSTM), whose stock forward can return
hidden states with logits for only the last position; BertForMaskedLM always builds logits at every
position, so BERT4Rec keeps the full softmax.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from behavior_lm.data.collators import IGNORE_INDEX

SOFTMAXES = ("full", "sampled")
PROPOSALS = ("uniform", "popularity")
SAMPLED_MODEL_TYPES = ("gpt2", "llama", "gru", "lstm")


def output_features(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """What the model's output layer reads, from its final hidden states: the GRU/LSTM apply their
    output dropout first, BERT's masked-LM head its transform (dense, GELU, LayerNorm); the stock
    causal transformers' final norm is already in ``hidden_states[-1]``.

    The transform runs on ``(rows, H)`` with ``rows`` padded up to :func:`row_bucket`: the number of
    masked positions differs in every batch, and the GELU inside is a oneDNN primitive that is
    built, and kept in oneDNN's cache (1,024 entries), once per distinct shape, each pinning
    megabytes of heap. Unpadded, a long ML-1M BERT4Rec run grew by ~13 MB per step up to 20 GB
    (docs/performance.md, "Memory of long runs"); padded, a handful of shapes recur. The zero
    rows are cut off again, so values and gradients are those of the unpadded rows."""
    drop = getattr(model, "dropout", None)
    if isinstance(drop, nn.Dropout):
        return drop(hidden)
    transform = mlm_transform(model)
    if transform is None:
        return hidden
    rows = hidden.shape[0]
    if hidden.dim() != 2 or row_bucket(rows) == rows:
        return transform(hidden)
    return transform(F.pad(hidden, (0, 0, 0, row_bucket(rows) - rows)))[:rows]


def row_bucket(rows: int) -> int:
    """``rows`` rounded up to a multiple of 64 and of 1/16 of its power of two: about eight sizes per
    doubling instead of one per count, at the cost of at most 1/8 more rows from 1,024 rows on."""
    step = max(64, 1 << max(0, rows.bit_length() - 4))
    return -(-rows // step) * step


def mlm_transform(model: PreTrainedModel) -> nn.Module | None:
    """``BertForMaskedLM``'s ``cls.predictions.transform`` (None for other models)."""
    return getattr(getattr(getattr(model, "cls", None), "predictions", None), "transform", None)


@dataclass
class SampledSoftmax:
    """Sampled next-item cross-entropy (module docstring).

    Args:
        candidates: ``(n,)`` token ids that may be drawn as negatives (the item tokens, cold items left out).
        log_q: ``(n,)`` log proposal probability of each candidate (sums to 1 in probability space).
        num_negatives: ``K``, negatives per step, shared by the batch.
        fixed: token ids scored exactly in every row, without sampling or correction: the few
            non-item tokens (behaviors, specials), so that a multi-behavior stream's behavior
            targets keep their exact softmax over behaviors and items.
        seed: negatives of step ``s`` come from a generator seeded ``(seed, s)``, so a resumed run
            draws the same negatives as an uninterrupted one.
    """

    candidates: torch.Tensor
    log_q: torch.Tensor
    num_negatives: int
    fixed: torch.Tensor
    seed: int = 0

    @classmethod
    def build(cls, items: torch.Tensor, proposal: str, num_negatives: int, seed: int,
              log_prior: torch.Tensor | None = None, exclude: torch.Tensor | None = None,
              pad_token_id: int | None = None) -> "SampledSoftmax":
        """``items``: ``(vocab,)`` bool, True at item tokens; ``exclude``: token ids never drawn
        (cold items); ``proposal``: ``uniform`` over the items or ``popularity`` (``log_prior``,
        a ``(vocab,)`` log frequency such as :func:`behavior_lm.models.output_prior.item_log_prior`)."""
        if proposal not in PROPOSALS:
            raise ValueError(f"negative_sampling must be one of {PROPOSALS}, got {proposal!r}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be positive, got {num_negatives}")
        drawable = items.bool().clone()
        if exclude is not None and exclude.numel():
            drawable[exclude] = False
        candidates = torch.nonzero(drawable).squeeze(1)
        if proposal == "uniform" or log_prior is None:
            log_q = torch.full((candidates.numel(),), -math.log(max(candidates.numel(), 1)))
        else:
            log_q = torch.log_softmax(log_prior[candidates].double(), dim=0).float()
        fixed = torch.nonzero(~items.bool()).squeeze(1)
        if pad_token_id is not None:
            fixed = fixed[fixed != pad_token_id]
        return cls(candidates, log_q, num_negatives, fixed, seed)

    def __post_init__(self) -> None:
        self._log_k = math.log(self.num_negatives)
        self.uniform = bool(self.log_q.numel()) and bool(torch.allclose(self.log_q, self.log_q[:1].expand_as(self.log_q)))

    def draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K,)`` negative token ids for optimizer step ``step`` and their corrections ``log(K Q)``.

        A uniform proposal draws without replacement (``min(K, n)`` distinct items, each included
        with probability ``K / n``, so ``log(K Q)`` is its exact log inclusion probability and
        ``K >= n`` is the full softmax); the popularity proposal draws with replacement (``K Q`` is
        then the expected count)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        n = self.candidates.numel()
        if self.uniform:
            pick = torch.randperm(n, generator=g)[: self.num_negatives]
            return self.candidates[pick], torch.full((pick.numel(),), math.log(min(self.num_negatives, n) / n))
        pick = torch.multinomial(self.log_q.double().exp(), self.num_negatives, replacement=True, generator=g)
        return self.candidates[pick], self.log_q[pick] + self._log_k

    def loss(self, model: PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor, step: int,
             num_items_in_batch: torch.Tensor | int | None = None, shift: bool = True) -> torch.Tensor:
        """Sampled cross-entropy over labelled positions, summed and divided by
        ``num_items_in_batch`` when the Trainer gives it (as the stock losses normalise), else by
        the count here. ``hidden``: ``(B, L, H)`` final hidden states; ``labels``: ``(B, L)``,
        ``-100`` where nothing is predicted; ``shift``: causal labels (position ``t`` predicts ``t+1``)."""
        if shift:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        where = labels != IGNORE_INDEX
        h = output_features(model, hidden[where])                                      # (N, H)
        targets = labels[where]                                                        # (N,)
        out = model.get_output_embeddings()
        weight, bias = out.weight, getattr(out, "bias", None)
        negatives, neg_correction = self.draw(step)
        others = torch.cat([negatives.to(h.device), self.fixed.to(h.device)])          # (K + F,)
        other_correction = torch.cat([neg_correction.to(h.device), torch.zeros(self.fixed.numel(), device=h.device)])
        pos = (h * weight[targets]).sum(-1)                                             # (N,)
        neg = h @ weight[others].T - other_correction                                   # (N, K + F)
        if bias is not None:
            pos, neg = pos + bias[targets], neg + bias[others]
        neg = neg.masked_fill(others.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))   # accidental hits
        logits = torch.cat([pos.unsqueeze(1), neg], dim=1).float()
        total = F.cross_entropy(logits, torch.zeros_like(targets), reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else where.sum().clamp(min=1)
        return total / count
