"""Batch collation for training windows and ranking examples.

The Trainer uses one ``data_collator`` for training and evaluation, so this collator looks at the
rows: training windows become causal-LM batches (labels = inputs, padding ignored); ranking rows
(which carry ``target`` and ``seen``) keep those as tensors for the ranking step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


@dataclass
class BehaviorCollator:
    """Right-pads ``input_ids``; adds ``labels`` for training rows, ``target``/``seen`` for ranking rows."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [list(f["input_ids"]) for f in features]
        input_ids = _pad(ids, self.pad_token_id)
        attention_mask = _pad([[1] * len(r) for r in ids], 0)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "target" in features[0]:
            batch["target"] = torch.as_tensor([f["target"] for f in features], dtype=torch.long)
            batch["seen"] = _pad([list(f["seen"]) for f in features], -1)
        else:
            labels = input_ids.clone()
            labels[attention_mask == 0] = IGNORE_INDEX
            batch["labels"] = labels
        return batch
