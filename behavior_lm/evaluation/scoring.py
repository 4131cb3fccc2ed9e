"""Scores for the next position, asking the model only for what ranking needs.

A model's forward would produce ``(batch, length, vocab)`` logits; ranking needs one position per
row. So we run the backbone (``model.base_model``), gather the hidden state at that position and
apply the prediction head to those ``(batch, hidden)`` vectors: memory is ``O(batch * vocab)``
whatever the history length. Batches are right-padded.

- causal models (GPT-2, Llama, GRU/LSTM): the position is each row's last real token;
- masked models (BERT4Rec): ``[MASK]`` is appended after the history and read there (the data
  pipeline leaves one slot free for it).

Rows may be padded on either side: the last real token is found from the mask, appended tokens go
right after it, and position ids count real tokens only (``cumsum(mask) - 1``), so a left-padded row
scores exactly as the same row without padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from behavior_lm.evaluation.metrics import rank_of_target


def is_masked_lm(model: PreTrainedModel) -> bool:
    """True for ``*ForMaskedLM`` models (scored by appending ``[MASK]``)."""
    return type(model).__name__.endswith("ForMaskedLM")


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` index of the last real token of each row (either padding side; 0 if none)."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among its row's real tokens (pads before the first get 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def append_token(input_ids: torch.Tensor, attention_mask: torch.Tensor, token_ids: torch.Tensor | int,
                 pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put ``token_ids`` (one per row, or one for all) right after each row's last real token;
    returns ids, mask and the positions written. Right-padded rows stay right-padded; left-padded
    rows grow by one column."""
    after = last_positions(attention_mask) + attention_mask.bool().any(dim=1).long()   # (B,)
    pad = torch.full((input_ids.size(0), 1), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    ids = torch.cat([input_ids, pad], dim=1)
    mask = torch.cat([attention_mask, torch.zeros_like(pad)], dim=1)
    rows = torch.arange(ids.size(0), device=ids.device)
    ids[rows, after] = torch.as_tensor(token_ids, dtype=ids.dtype, device=ids.device)
    mask[rows, after] = 1
    return ids, mask, after


def prediction_head(model: PreTrainedModel) -> nn.Module:
    """The module that maps hidden states to vocabulary logits (transform + decoder for BERT)."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return model.get_output_embeddings()


@torch.no_grad()
def next_token_scores(model: PreTrainedModel, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, vocab)`` logits for the token after each history."""
    rows = torch.arange(input_ids.size(0), device=input_ids.device)
    if is_masked_lm(model):
        cfg = model.config
        input_ids, attention_mask, positions = append_token(
            input_ids, attention_mask, cfg.mask_token_id, cfg.pad_token_id)
    else:
        positions = last_positions(attention_mask)
    backbone = model.base_model
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_for(attention_mask))
    if backbone is model:  # a model without a separate head: fall back to its own logits
        return model(**inputs).logits[rows, positions]
    hidden = backbone(**inputs).last_hidden_state
    return prediction_head(model)(hidden[rows, positions])                 # (B, H) -> (B, V)


def item_log_softmax(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``log P(item)`` normalised over item tokens only (``-inf`` elsewhere)."""
    cand = candidates.to(logits.device)
    if cand.numel() < logits.size(1):                  # model vocab padded beyond the tokenizer
        cand = torch.nn.functional.pad(cand, (0, logits.size(1) - cand.numel()), value=False)
    return torch.log_softmax(logits.float().masked_fill(~cand[: logits.size(1)], float("-inf")), dim=-1)


@torch.no_grad()
def behavior_log_probs(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       behavior_ids: torch.Tensor) -> torch.Tensor | None:
    """``log P(b | h)`` over the behavior tokens, ``(batch, n_behaviors)``; ``None`` for masked-item
    models, which are never trained to predict a behavior token."""
    if is_masked_lm(model):
        return None
    first = next_token_scores(model, input_ids, attention_mask)
    return torch.log_softmax(first[:, behavior_ids.to(first.device)].float(), dim=-1)


@torch.no_grad()
def item_log_probs_given(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         candidates: torch.Tensor, behavior_ids: torch.Tensor) -> torch.Tensor:
    """``log P(item | h, b)`` for every behavior, ``(batch, n_behaviors, vocab)``: each history is
    repeated once per behavior with that ``<b>`` appended, all in one batched forward."""
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    batch, n_b = input_ids.size(0), behavior_ids.numel()
    ids, mask, _ = append_token(input_ids.repeat_interleave(n_b, dim=0),
                                attention_mask.repeat_interleave(n_b, dim=0),
                                behavior_ids.to(input_ids.device).repeat(batch), pad)
    return item_log_softmax(next_token_scores(model, ids, mask), candidates).view(batch, n_b, -1)


@torch.no_grad()
def next_item_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     candidates: torch.Tensor, behavior_ids: torch.Tensor | None = None,
                     condition: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch, vocab)`` scores of the next *item*, whatever the stream looks like.

    One-behavior streams (``behavior_ids`` empty/None): the next token is an item, so these are
    :func:`next_token_scores`. Multi-behavior streams put ``<b>`` before each item, so the token
    after a history is a behavior:

    - ``condition`` (one behavior token id per row, e.g. the target's ``<buy>``): append it and
      read the item logits ("what will they buy next");
    - otherwise the mixture ``log sum_b P(b|h) P(item|h,b)``, every behavior in one batched
      forward. Masked-item models never learn ``P(b|h)``: their mixture is uniform over behaviors.

    ``candidates``: ``(vocab,)`` bool, True at item tokens (normalisation is over those only).
    """
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    if behavior_ids is None or behavior_ids.numel() == 0:
        return next_token_scores(model, input_ids, attention_mask)
    if condition is not None:
        ids, mask, _ = append_token(input_ids, attention_mask, condition, pad)
        return next_token_scores(model, ids, mask)
    log_pb = behavior_log_probs(model, input_ids, attention_mask, behavior_ids)
    if log_pb is None:                                                   # masked: uniform mixture
        n_b = behavior_ids.numel()
        log_pb = torch.full((input_ids.size(0), n_b), -math.log(n_b), device=input_ids.device)
    log_pi = item_log_probs_given(model, input_ids, attention_mask, candidates, behavior_ids)
    return torch.logsumexp(log_pb.unsqueeze(-1) + log_pi, dim=1)                        # (B, V)


def score_ranks(scores: torch.Tensor, targets: torch.Tensor, item_mask: torch.Tensor,
                seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks of the targets and the cross-entropy of the target among item tokens."""
    mask = item_mask.to(scores.device)
    if mask.numel() < scores.size(1):  # model vocab padded beyond the tokenizer
        mask = F.pad(mask, (0, scores.size(1) - mask.numel()), value=False)
    scores = scores[:, : mask.numel()]
    ranks = rank_of_target(scores, targets, mask, seen)
    item_logits = scores.float().masked_fill(~mask, float("-inf"))
    loss = F.cross_entropy(item_logits, targets)
    return ranks, loss
