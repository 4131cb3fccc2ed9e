"""Scores for the next position, asking the model only for what ranking needs.

A model's forward would produce ``(batch, length, vocab)`` logits; ranking needs one position per
row. So we run the backbone (``model.base_model``), gather the hidden state at that position and
apply the prediction head to those ``(batch, hidden)`` vectors: memory is ``O(batch * vocab)``
whatever the history length. Batches are right-padded.

- causal models (GPT-2, Llama, GRU/LSTM): the position is each row's last real token;
- masked models (BERT4Rec): ``[MASK]`` is appended after the history and read there (the data
  pipeline leaves one slot free for it).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


def is_masked_lm(model: PreTrainedModel) -> bool:
    """True for ``*ForMaskedLM`` models (scored by appending ``[MASK]``)."""
    return type(model).__name__.endswith("ForMaskedLM")


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` index of the last real token of each right-padded row."""
    return attention_mask.long().sum(dim=1).clamp(min=1) - 1


def append_mask_token(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_token_id: int,
                      pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Put ``[MASK]`` right after each row's last real token; returns ids, mask, its positions."""
    lengths = attention_mask.long().sum(dim=1)                              # (B,)
    pad = torch.full((input_ids.size(0), 1), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    ids = torch.cat([input_ids, pad], dim=1)
    mask = torch.cat([attention_mask, torch.zeros_like(pad)], dim=1)
    rows = torch.arange(ids.size(0), device=ids.device)
    ids[rows, lengths] = mask_token_id
    mask[rows, lengths] = 1
    return ids, mask, lengths


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
        input_ids, attention_mask, positions = append_mask_token(
            input_ids, attention_mask, cfg.mask_token_id, cfg.pad_token_id)
    else:
        positions = last_positions(attention_mask)
    backbone = model.base_model
    if backbone is model:  # a model without a separate head: fall back to its own logits
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, positions]
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return prediction_head(model)(hidden[rows, positions])                 # (B, H) -> (B, V)
