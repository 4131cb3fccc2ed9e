"""Scores for the next position, asking the model only for what ranking needs.

A causal model's forward would produce ``(batch, length, vocab)`` logits; ranking needs the last
real position only. So we run the backbone (``model.base_model``), gather the hidden state at each
row's last non-pad position, and apply the output head to those ``(batch, hidden)`` vectors: memory
is ``O(batch * vocab)`` whatever the history length. Batches are right-padded.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedModel


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` index of the last real token of each right-padded row."""
    return attention_mask.long().sum(dim=1).clamp(min=1) - 1


@torch.no_grad()
def next_token_scores(model: PreTrainedModel, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """``(batch, vocab)`` logits for the token after each history (causal models)."""
    backbone = model.base_model
    if backbone is model:  # a model without a separate head: fall back to its own logits
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        rows = torch.arange(input_ids.size(0), device=input_ids.device)
        return out.logits[rows, last_positions(attention_mask)]
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = torch.arange(input_ids.size(0), device=input_ids.device)
    last = hidden[rows, last_positions(attention_mask)]                     # (B, H)
    head = model.get_output_embeddings()
    return head(last)                                                       # (B, V)
