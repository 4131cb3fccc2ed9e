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
    """Right-pads ``input_ids``; adds ``labels`` for training rows, ``target``/``seen`` for ranking rows.

    With ``mask_token_id`` set (BERT4Rec), training rows become cloze tasks: each item token is
    replaced by ``[MASK]`` with probability ``mask_probability`` and the last item of every row is
    masked as well (with probability ``mask_last_probability``, default always), so training also
    practises exactly what evaluation asks (the item after the history, at an appended ``[MASK]``).
    Labels are the original items at masked positions only.
    """

    pad_token_id: int
    mask_token_id: int | None = None
    mask_probability: float = 0.2
    mask_last_probability: float = 1.0
    maskable: torch.Tensor | None = None  # (vocab,) bool: which tokens may be masked (items)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [list(f["input_ids"]) for f in features]
        input_ids = _pad(ids, self.pad_token_id)
        attention_mask = _pad([[1] * len(r) for r in ids], 0)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in features[0]:  # classification / regression / token labels from the log
            first = features[0]["labels"]
            if isinstance(first, (list, tuple)):
                batch["labels"] = _pad([list(f["labels"]) for f in features], IGNORE_INDEX)
            else:
                dtype = torch.float32 if isinstance(first, float) else torch.long
                batch["labels"] = torch.as_tensor([f["labels"] for f in features], dtype=dtype)
        elif "target" in features[0]:
            batch["target"] = torch.as_tensor([f["target"] for f in features], dtype=torch.long)
            batch["seen"] = _pad([list(f["seen"]) for f in features], -1)
            if "target_behavior_id" in features[0]:
                batch["target_behavior"] = torch.as_tensor([f["target_behavior_id"] for f in features],
                                                           dtype=torch.long)
        elif self.mask_token_id is not None:
            batch["input_ids"], batch["labels"] = self._cloze(input_ids, attention_mask)
        else:
            labels = input_ids.clone()
            labels[attention_mask == 0] = IGNORE_INDEX
            batch["labels"] = labels
        return batch

    def _cloze(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        can = attention_mask.bool()
        if self.maskable is not None:
            can &= self.maskable[input_ids]
        chosen = (torch.rand(input_ids.shape) < self.mask_probability) & can
        # mask each row's last maskable token (the "next item" of that window)
        positions = torch.arange(input_ids.size(1)).expand_as(input_ids)
        last = torch.where(can, positions, -1).max(dim=1).values                # (B,)
        forced = last >= 0
        if self.mask_last_probability < 1.0:     # no extra draw at 1.0: the masks of earlier runs stay
            forced &= torch.rand(last.shape) < self.mask_last_probability
        rows = torch.nonzero(forced).squeeze(1)
        chosen[rows, last[rows]] = True
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        masked = torch.where(chosen, torch.full_like(input_ids, self.mask_token_id), input_ids)
        return masked, labels
