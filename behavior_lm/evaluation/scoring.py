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
from behavior_lm.models.text_ranker import is_text_ranker


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


def output_layer(model: PreTrainedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight (V, H), bias (V,) or None)`` of the layer that maps features to vocabulary logits."""
    out = model.get_output_embeddings()
    return out.weight, getattr(out, "bias", None)


def _features_and_decoder(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """What the output layer reads for the token after each history, ``(B, H)``, and the module
    that turns such features into logits (``None``: the model has no separate head)."""
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
    if backbone is model:  # a model without a separate head: its own logits at those positions
        return model(**inputs).logits[rows, positions], None
    hidden = backbone(**inputs).last_hidden_state[rows, positions]                # (B, H)
    head = prediction_head(model)
    transform = getattr(getattr(head, "predictions", None), "transform", None)   # BERT's MLM transform
    if transform is not None:
        return transform(hidden), head.predictions.decoder
    return hidden, head


@torch.no_grad()
def next_token_scores(model: PreTrainedModel, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, vocab)`` logits for the token after each history."""
    features, decoder = _features_and_decoder(model, input_ids, attention_mask)
    return features if decoder is None else decoder(features)                  # (B, H) -> (B, V)


@torch.no_grad()
def next_token_features(model: PreTrainedModel, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, H)``: what the output layer reads for the token after each history, so that a
    catalogue too large for ``(batch, vocab)`` logits can be scored in item chunks
    (:func:`chunked_ranks`, :func:`chunked_top_k`) against :func:`output_layer`."""
    features, decoder = _features_and_decoder(model, input_ids, attention_mask)
    if decoder is None:
        raise ValueError(f"{type(model).__name__} has no separate output layer to score in chunks")
    return features


def chunk_scoring_applies(model: nn.Module, item_chunk: int, behavior_ids: torch.Tensor | None) -> bool:
    """Whether ranking should go item chunk by item chunk: a catalogue larger than ``item_chunk``
    (0: never), an id model with a separate output layer, one-behavior streams (the behavior
    mixture needs whole distributions)."""
    if not item_chunk or is_text_ranker(model) or (behavior_ids is not None and behavior_ids.numel()):
        return False
    out = model.get_output_embeddings()
    return out is not None and out.weight.size(0) > item_chunk and model.base_model is not model


def _chunk_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  start: int, stop: int) -> torch.Tensor:
    logits = features @ weight[start:stop].T
    return (logits if bias is None else logits + bias[start:stop]).float()


def _chunk_valid(candidates: torch.Tensor, seen: torch.Tensor | None, start: int, stop: int,
                 batch: int) -> torch.Tensor:
    """``(B, C)`` bool: candidates in ``[start, stop)`` that are not in the row's ``seen``."""
    valid = candidates[start:stop].to(torch.bool).unsqueeze(0).repeat(batch, 1)
    if seen is not None and seen.numel():
        rows = torch.arange(batch, device=seen.device).unsqueeze(1).expand_as(seen)
        inside = (seen >= start) & (seen < stop)
        valid[rows[inside], seen[inside] - start] = False
    return valid


@torch.no_grad()
def chunked_ranks(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  targets: torch.Tensor, candidates: torch.Tensor, seen: torch.Tensor | None,
                  chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ranks and item cross-entropy as :func:`score_ranks` over ``features @ weight.T +
    bias``, computed ``chunk`` items at a time: memory ``O(batch * chunk)`` whatever the catalogue
    size. Ranks are pessimistic (other valid candidates scoring ``>=`` the target); ``seen`` items
    are left out except the target; the loss normalises over ``candidates`` (seen ones included,
    as :func:`score_ranks` does).

    The target's score is taken from the chunk matmul that holds it, as the whole-logits ranking
    does; until that chunk is reached a separately computed estimate is used, and the few scores
    within rounding distance of it are kept and compared exactly at the end, so ties rank the same
    as in :func:`~behavior_lm.evaluation.metrics.rank_of_target`."""
    batch, vocab = features.size(0), min(weight.size(0), candidates.numel())
    rows = torch.arange(batch, device=features.device)
    estimate = (features * weight[targets]).sum(-1)
    if bias is not None:
        estimate = estimate + bias[targets]
    estimate = estimate.float()
    slack = 1e-4 * (estimate.abs() + 1.0)
    lo, hi = (estimate - slack).unsqueeze(1), (estimate + slack).unsqueeze(1)
    exact = estimate.clone()
    above = torch.zeros(batch, dtype=torch.long, device=features.device)
    near_rows, near_scores = [], []
    log_z = torch.full((batch,), float("-inf"), device=features.device)
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        logits = _chunk_logits(features, weight, bias, start, stop)                  # (B, C)
        cand = candidates[start:stop].to(torch.bool).unsqueeze(0)
        log_z = torch.logaddexp(log_z, torch.logsumexp(logits.masked_fill(~cand, float("-inf")), dim=1))
        valid = _chunk_valid(candidates, seen, start, stop, batch)
        inside = (targets >= start) & (targets < stop)
        exact[inside] = logits[rows[inside], targets[inside] - start]
        valid[rows[inside], targets[inside] - start] = False        # the target is not "another" item
        above += ((logits > hi) & valid).sum(dim=1)
        near = (logits >= lo) & (logits <= hi) & valid
        if near.any():
            r, c = near.nonzero(as_tuple=True)
            near_rows.append(r)
            near_scores.append(logits[r, c])
    if near_rows:
        r, v = torch.cat(near_rows), torch.cat(near_scores)
        above += torch.bincount(r[v >= exact[r]], minlength=batch)
    return above, (log_z - exact).mean()


@torch.no_grad()
def chunked_top_k(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int,
                  candidates: torch.Tensor, seen: torch.Tensor | None = None,
                  chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, token ids)``, each ``(B, k)``, of the ``k`` best candidates not in ``seen``, by a
    running top-k over item chunks (memory ``O(batch * (chunk + k))``)."""
    batch, vocab = features.size(0), min(weight.size(0), candidates.numel())
    best = torch.full((batch, 0), float("-inf"), device=features.device)
    best_ids = torch.zeros((batch, 0), dtype=torch.long, device=features.device)
    for start in range(0, vocab, chunk):
        stop = min(start + chunk, vocab)
        logits = _chunk_logits(features, weight, bias, start, stop)
        logits = logits.masked_fill(~_chunk_valid(candidates, seen, start, stop, batch), float("-inf"))
        scores = torch.cat([best, logits], dim=1)
        ids = torch.cat([best_ids, torch.arange(start, stop, device=features.device).expand(batch, -1)], dim=1)
        top = scores.topk(min(k, scores.size(1)), dim=1)
        best, best_ids = top.values, ids.gather(1, top.indices)
    return best, best_ids


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
