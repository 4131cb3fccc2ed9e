"""The floors (most-popular, first-order Markov, repeat) as small modules with their counts in
buffers.

A floor is built once from the training streams and then reads only token ids, exactly like a
model: ``forward(input_ids, attention_mask) -> (batch, vocab)`` non-negative scores, zero off the
item tokens. Being modules, they are scored by the same harness as the models, and an ensemble
(:mod:`behavior_lm.evaluation.fusion`) saves them next to its models (safetensors) and serves
them without the training data.

A floor's *distribution* (:meth:`Floor.log_probs`, what probability fusion mixes) is a proper
probability model that ranks items exactly as the floor's scores do:

- popularity: the items' training frequencies;
- Markov: transitions out of the last item with one pseudo-transition spread by popularity,
  ``(c(last -> i) + p_pop(i)) / (c(last) + 1)``;
- repeat: ``(1 - eps)`` on the user's own items in proportion to their repeat scores, ``eps`` spread
  by popularity over the rest; mixed with a model by fusion, this is a copy mechanism whose weight
  is fitted on validation (the share of targets the user had touched).
"""
from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from torch import nn

FLOORS = ("popularity", "markov", "repeat")


def _item_counts(train: Dataset, candidates: torch.Tensor) -> np.ndarray:
    """How often each item token occurs in the training streams (zero at non-item tokens)."""
    counts = np.zeros(candidates.numel(), dtype=np.float64)
    for ids in train["input_ids"]:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1.0)
    counts[~candidates.numpy()] = 0.0
    return counts


class Floor(nn.Module):
    """Base: ``candidates`` is the ``(vocab,)`` item mask; subclasses fill ``forward``."""

    name = "floor"

    def __init__(self, candidates: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("candidates", candidates.bool().clone())

    def real_items(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The item tokens of one row, oldest first (pads, ``[BOS]`` and behavior tokens dropped)."""
        real = ids[mask.bool()]
        return real[self.candidates[real]]

    @torch.no_grad()
    def log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``log P(item)`` over the item tokens (``-inf`` elsewhere); by default the scores
        normalised. Subclasses whose scores mix counts with tie-breaks define a proper model."""
        return _normalised_log(self(input_ids, attention_mask), self.candidates)


def _normalised_log(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    scores = scores.float().masked_fill(~candidates, 0.0)
    return (scores / scores.sum(dim=-1, keepdim=True).clamp(min=1e-30)).log()


class PopularityFloor(Floor):
    """Every user gets the training counts of the items."""

    name = "popularity"

    def __init__(self, counts: torch.Tensor, candidates: torch.Tensor) -> None:
        super().__init__(candidates)
        self.register_buffer("counts", counts.float().clone())

    @classmethod
    def from_train(cls, train: Dataset, candidates: torch.Tensor) -> "PopularityFloor":  # noqa: D102
        return cls(torch.as_tensor(_item_counts(train, candidates)), candidates)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(input_ids.size(0), -1)


class MarkovFloor(Floor):
    """Item-to-item transition counts out of the user's last item; popularity (scaled below one
    transition) breaks ties, so users whose last item was never followed still get a sensible
    list. Transitions are kept sparse (CSR: ``indptr``, ``next_items``, ``counts``), never
    ``vocab x vocab``."""

    name = "markov"

    def __init__(self, indptr: torch.Tensor, next_items: torch.Tensor, counts: torch.Tensor,
                 tie_break: torch.Tensor, candidates: torch.Tensor) -> None:
        super().__init__(candidates)
        self.register_buffer("indptr", indptr.long().clone())
        self.register_buffer("next_items", next_items.long().clone())
        self.register_buffer("counts", counts.float().clone())
        self.register_buffer("tie_break", tie_break.float().clone())

    @classmethod
    def from_train(cls, train: Dataset, candidates: torch.Tensor) -> "MarkovFloor":
        vocab = candidates.numel()
        is_item = candidates.numpy()
        prev_parts, next_parts = [], []
        for ids in train["input_ids"]:
            seq = np.asarray(ids, dtype=np.int64)
            seq = seq[is_item[seq]]                  # item tokens only (skips [BOS], behaviors)
            if seq.size > 1:
                prev_parts.append(seq[:-1])
                next_parts.append(seq[1:])
        prev = np.concatenate(prev_parts) if prev_parts else np.zeros(0, dtype=np.int64)
        nxt = np.concatenate(next_parts) if next_parts else np.zeros(0, dtype=np.int64)
        pairs, counts = np.unique(prev * vocab + nxt, return_counts=True)
        rows, cols = np.divmod(pairs, vocab)
        indptr = np.searchsorted(rows, np.arange(vocab + 1))          # CSR row starts
        popularity = _item_counts(train, candidates)
        tie_break = popularity / (popularity.max(initial=0.0) + 1.0)
        return cls(*(torch.as_tensor(a) for a in (indptr, cols, counts, tie_break)), candidates)

    def _transitions(self, base: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     normalise: bool) -> torch.Tensor:
        """``base`` plus the counts of the transitions out of each row's last item (divided by
        one more than their total when ``normalise``)."""
        out = base.unsqueeze(0).repeat(input_ids.size(0), 1)                    # (B, V)
        for b in range(input_ids.size(0)):
            real = self.real_items(input_ids[b], attention_mask[b])
            if real.numel():
                last = int(real[-1])
                lo, hi = int(self.indptr[last]), int(self.indptr[last + 1])
                out[b, self.next_items[lo:hi]] += self.counts[lo:hi]
                if normalise:
                    out[b] /= 1.0 + float(self.counts[lo:hi].sum())
        return out

    @torch.no_grad()
    def log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(c(last -> i) + p_pop(i)) / (c(last) + 1)``: same order as the scores (the
        popularity share is below one transition)."""
        p_pop = self.tie_break / self.tie_break.sum().clamp(min=1e-30)
        out = self._transitions(p_pop, input_ids, attention_mask, normalise=True)
        return out.masked_fill(~self.candidates, 0.0).log()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._transitions(self.tie_break, input_ids, attention_mask, normalise=False)


class RepeatFloor(Floor):
    """The items the user already touched, most frequent first, ties broken by the most recent
    touch; every other item after them, by training popularity. On logs where people come back
    to the same items (e-commerce, music) this is the floor that matters; it is useless when seen
    items are filtered."""

    name = "repeat"

    def __init__(self, base: torch.Tensor, candidates: torch.Tensor) -> None:
        super().__init__(candidates)
        self.register_buffer("base", base.float().clone())

    @classmethod
    def from_train(cls, train: Dataset, candidates: torch.Tensor) -> "RepeatFloor":
        popularity = _item_counts(train, candidates)
        return cls(torch.as_tensor(popularity / (popularity.max(initial=0.0) + 1.0)), candidates)  # < 1

    EPSILON = 1e-4

    @torch.no_grad()
    def log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``1 - eps`` on the user's own items in proportion to their scores, ``eps`` by popularity
        elsewhere (all of it by popularity for an empty history): same order as the scores."""
        scores = self(input_ids, attention_mask).float()
        p_pop = self.base / self.base.sum().clamp(min=1e-30)
        touched = scores >= 1.0                          # untouched items score below one
        own = scores.masked_fill(~touched, 0.0)
        own = own / own.sum(dim=-1, keepdim=True).clamp(min=1e-30)
        rest = p_pop.unsqueeze(0).masked_fill(touched, 0.0)
        rest = rest / rest.sum(dim=-1, keepdim=True).clamp(min=1e-30)
        has = touched.any(dim=-1, keepdim=True)
        probs = torch.where(has, (1 - self.EPSILON) * own + self.EPSILON * rest, p_pop.unsqueeze(0))
        return probs.masked_fill(~self.candidates, 0.0).log()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vocab = self.base.numel()
        out = self.base.unsqueeze(0).repeat(input_ids.size(0), 1)
        for b in range(input_ids.size(0)):
            real = self.real_items(input_ids[b], attention_mask[b])
            if real.numel():
                n = real.numel()
                counts = torch.bincount(real, minlength=vocab)[:vocab].float()
                last = torch.zeros(vocab, device=out.device).scatter_reduce(     # last position touched
                    0, real, torch.arange(1, n + 1, dtype=torch.float32, device=out.device), reduce="amax")
                touched = counts > 0
                out[b, touched] = 1.0 + counts[touched] + last[touched] / (n + 1.0)
        return out


FLOOR_CLASSES: dict[str, type[Floor]] = {"popularity": PopularityFloor, "markov": MarkovFloor,
                                         "repeat": RepeatFloor}


def build_floor(name: str, train: Dataset, candidates: torch.Tensor) -> Floor:
    """A floor by name, counted on ``train`` (the registry the harness and fusion share)."""
    if name not in FLOOR_CLASSES:
        raise ValueError(f"unknown floor {name!r}; known: {', '.join(FLOORS)}")
    return FLOOR_CLASSES[name].from_train(train, candidates)


def floor_from_buffers(name: str, buffers: dict[str, torch.Tensor]) -> Floor:
    """Rebuild a saved floor from its buffers (``state_dict`` order = constructor order)."""
    cls = FLOOR_CLASSES[name]
    fields = {"popularity": ("counts",), "markov": ("indptr", "next_items", "counts", "tie_break"),
              "repeat": ("base",)}[name]
    return cls(*(buffers[f] for f in fields), buffers["candidates"])
