"""The one evaluation harness: any scorer, the same ranks, the same metrics.

A *scorer* maps a collated batch to ``(batch, vocab)`` next-token scores. Models, baselines and
(later) fused ensembles are all scorers, so every row of a results table went through
:func:`score_ranks` and :func:`~behavior_lm.evaluation.metrics.ranking_metrics`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from behavior_lm.evaluation.metrics import ranking_metrics
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.evaluation.scoring import next_item_scores, next_token_scores, score_ranks
from behavior_lm.tokenization.behavior_tokenizer import behavior_token_ids, item_mask
from behavior_lm.data.collators import BehaviorCollator

Scorer = Callable[[dict[str, torch.Tensor]], torch.Tensor]
BASELINES = ("popularity", "markov", "repeat")


def model_scorer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None,
                 protocol: EvalProtocol | None = None) -> Scorer:
    """Next-item scores from a model (last hidden state times the output head). On streams with
    behavior tokens, the mixture over behaviors or, when the protocol says so, the scores given
    each target's behavior (:func:`~behavior_lm.evaluation.scoring.next_item_scores`)."""
    device = next(model.parameters()).device
    model.eval()
    vocab = model.get_output_embeddings().out_features
    candidates = item_mask(tokenizer, vocab) if tokenizer is not None else None
    b_ids = (torch.tensor(list(behavior_token_ids(tokenizer).values()), dtype=torch.long)
             if tokenizer is not None else None)
    condition = protocol is not None and protocol.condition_on_behavior

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if candidates is None:
            return next_token_scores(model, ids, mask).cpu()
        given = batch["target_behavior"].to(device) if condition else None
        return next_item_scores(model, ids, mask, candidates, b_ids, given).cpu()

    return score


def popularity_scorer(train: Dataset, vocab_size: int) -> Scorer:
    """Most-popular floor: every user gets the training-event counts of the items."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for ids in train["input_ids"]:
        np.add.at(counts, np.asarray(ids, dtype=np.int64), 1.0)
    scores = torch.as_tensor(counts, dtype=torch.float32)

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return scores.unsqueeze(0).expand(batch["input_ids"].size(0), -1)

    return score


def markov_scorer(train: Dataset, vocab_size: int, candidates: torch.Tensor) -> Scorer:
    """First-order Markov floor: item-to-item transition counts from the training streams.

    A user's scores are the counts of transitions out of their last item; popularity (scaled
    below one transition) breaks ties, so users whose last item was never followed still get a
    sensible list instead of a constant one. Counts are kept sparse (CSR), never ``vocab x vocab``.
    """
    prev_parts, next_parts = [], []
    popularity = np.zeros(vocab_size, dtype=np.float64)
    is_item = candidates.numpy()
    for ids in train["input_ids"]:
        seq = np.asarray(ids, dtype=np.int64)
        seq = seq[is_item[seq]]                  # item tokens only (skips [BOS], behaviors)
        np.add.at(popularity, seq, 1.0)
        if seq.size > 1:
            prev_parts.append(seq[:-1])
            next_parts.append(seq[1:])
    prev = np.concatenate(prev_parts) if prev_parts else np.zeros(0, dtype=np.int64)
    nxt = np.concatenate(next_parts) if next_parts else np.zeros(0, dtype=np.int64)
    pairs, counts = np.unique(prev * vocab_size + nxt, return_counts=True)
    rows, cols = np.divmod(pairs, vocab_size)
    indptr = np.searchsorted(rows, np.arange(vocab_size + 1))          # CSR row starts
    tie_break = torch.as_tensor(popularity / (popularity.max() + 1.0), dtype=torch.float32)

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = tie_break.unsqueeze(0).repeat(ids.size(0), 1)              # (B, V)
        for b in range(ids.size(0)):
            real = ids[b][mask[b].bool()].numpy()
            real = real[is_item[real]]
            if real.size:
                last = int(real[-1])
                lo, hi = indptr[last], indptr[last + 1]
                out[b, torch.as_tensor(cols[lo:hi])] += torch.as_tensor(counts[lo:hi], dtype=torch.float32)
        return out

    return score


def repeat_scorer(train: Dataset, vocab_size: int, candidates: torch.Tensor) -> Scorer:
    """Repeat floor: the items the user already touched, most frequent first, ties broken by the
    most recent touch; every other item after them, by training popularity. On logs where people
    come back to the same items (e-commerce, music) this is the floor that matters; it is useless
    when seen items are filtered."""
    popularity = np.zeros(vocab_size, dtype=np.float64)
    for ids in train["input_ids"]:
        np.add.at(popularity, np.asarray(ids, dtype=np.int64), 1.0)
    popularity[~candidates.numpy()[:vocab_size]] = 0.0
    base = torch.as_tensor(popularity / (popularity.max() + 1.0), dtype=torch.float32)  # < 1

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = base.unsqueeze(0).repeat(ids.size(0), 1)
        for b in range(ids.size(0)):
            real = ids[b][mask[b].bool()]
            real = real[candidates[real]]
            if real.numel():
                n = real.numel()
                counts = torch.bincount(real, minlength=vocab_size)[:vocab_size].float()
                last = torch.zeros(vocab_size).scatter_reduce(          # last position touched
                    0, real, torch.arange(1, n + 1, dtype=torch.float32), reduce="amax")
                touched = counts > 0
                out[b, touched] = 1.0 + counts[touched] + last[touched] / (n + 1.0)
        return out

    return score


def rank_dataset(scorer: Scorer, dataset: Dataset, tokenizer: PreTrainedTokenizerBase,
                 protocol: EvalProtocol, *, batch_size: int = 256, vocab_size: int | None = None,
                 desc: str = "ranking") -> np.ndarray:
    """Pessimistic rank of every example's target under ``protocol``."""
    mask = item_mask(tokenizer, vocab_size)
    loader = DataLoader(dataset.with_format(None), batch_size=batch_size, shuffle=False,
                        collate_fn=BehaviorCollator(tokenizer.pad_token_id))
    out: list[np.ndarray] = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=len(loader) < 4):
        scores = scorer(batch)
        ranks, _ = score_ranks(scores, batch["target"], mask,
                               batch["seen"] if protocol.filter_seen else None)
        out.append(ranks.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate_scorer(scorer: Scorer, dataset: Dataset, tokenizer: PreTrainedTokenizerBase,
                    protocol: EvalProtocol, **kwargs) -> dict[str, float]:
    """HR/NDCG/MRR@K of a scorer on a ranking dataset, plus the example count and time."""
    start = time.perf_counter()
    ranks = rank_dataset(scorer, dataset, tokenizer, protocol, **kwargs)
    metrics = ranking_metrics(ranks, protocol.ks)
    metrics["num_examples"] = int(ranks.size)
    metrics["eval_seconds"] = round(time.perf_counter() - start, 3)
    return metrics


def evaluate_model(model: PreTrainedModel, dataset: Dataset, tokenizer: PreTrainedTokenizerBase,
                   protocol: EvalProtocol, *, batch_size: int = 256) -> dict[str, float]:
    return evaluate_scorer(model_scorer(model, tokenizer, protocol), dataset, tokenizer, protocol,
                           batch_size=batch_size, vocab_size=model.get_output_embeddings().out_features,
                           desc="evaluating")


def evaluate_baselines(names: Iterable[str], train: Dataset, dataset: Dataset,
                       tokenizer: PreTrainedTokenizerBase, protocol: EvalProtocol,
                       *, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Score the requested floors on ``dataset``."""
    results = {}
    for name in names:
        if name == "popularity":
            scorer = popularity_scorer(train, len(tokenizer))
        elif name == "markov":
            scorer = markov_scorer(train, len(tokenizer), item_mask(tokenizer))
        elif name == "repeat":
            scorer = repeat_scorer(train, len(tokenizer), item_mask(tokenizer))
        else:
            raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
        results[name] = evaluate_scorer(scorer, dataset, tokenizer, protocol,
                                        batch_size=batch_size, desc=name)
    return results
