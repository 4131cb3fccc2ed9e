"""The one evaluation harness: any scorer, the same ranks, the same metrics.

A *scorer* maps a collated batch to ``(batch, vocab)`` next-token scores. Models, floors and
fused ensembles (:mod:`~behavior_lm.evaluation.fusion`) are all scorers, so every row of a results table went through
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

from behavior_lm.evaluation.fusion import BehaviorEnsembleModel
from behavior_lm.evaluation.floors import FLOORS, Floor, build_floor
from behavior_lm.evaluation.metrics import ranking_metrics
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.evaluation.scoring import (chunk_scoring_applies, chunked_ranks, next_item_scores, next_token_features, output_layer,
                                            score_ranks)
from behavior_lm.tokenization.behavior_tokenizer import behavior_token_ids, item_mask
from behavior_lm.data.collators import BehaviorCollator

Scorer = Callable[[dict[str, torch.Tensor]], torch.Tensor]
BASELINES = FLOORS


def model_scorer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 protocol: EvalProtocol | None = None) -> Scorer:
    """Next-item scores from a model (last hidden state times the output head). On streams with
    behavior tokens, the mixture over behaviors or, when the protocol says so, the scores given
    each target's behavior (:func:`~behavior_lm.evaluation.scoring.next_item_scores`)."""
    device = next(model.parameters()).device
    model.eval()
    vocab = model.get_output_embeddings().out_features
    candidates = item_mask(tokenizer, vocab)                 # the tokenizer says which tokens are items
    b_ids = torch.tensor(list(behavior_token_ids(tokenizer).values()), dtype=torch.long)
    condition = protocol is not None and protocol.condition_on_behavior

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if isinstance(model, BehaviorEnsembleModel):
            given = batch["target_behavior"].to(device) if condition else None
            return model.fused_scores(ids, mask, candidates.to(device), b_ids, given).cpu()
        given = batch["target_behavior"].to(device) if condition else None
        return next_item_scores(model, ids, mask, candidates, b_ids, given).cpu()

    return score


def floor_scorer(floor: Floor) -> Scorer:
    """A floor module (:mod:`behavior_lm.evaluation.floors`) as a harness scorer."""

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return floor(batch["input_ids"], batch["attention_mask"])

    return score


def markov_scorer(train: Dataset, vocab_size: int, candidates: torch.Tensor) -> Scorer:
    """First-order Markov floor (:class:`~behavior_lm.evaluation.floors.MarkovFloor`)."""
    return floor_scorer(build_floor("markov", train, candidates[:vocab_size]))


def repeat_scorer(train: Dataset, vocab_size: int, candidates: torch.Tensor) -> Scorer:
    """Repeat floor (:class:`~behavior_lm.evaluation.floors.RepeatFloor`)."""
    return floor_scorer(build_floor("repeat", train, candidates[:vocab_size]))


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


def _metrics(ranks: list[np.ndarray], protocol: EvalProtocol, start: float) -> dict[str, float]:
    """HR/NDCG/MRR@K of batches of ranks, with the example count and the seconds since ``start``."""
    ranks_all = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    metrics = ranking_metrics(ranks_all, protocol.ks)
    metrics["num_examples"] = int(ranks_all.size)
    metrics["eval_seconds"] = round(time.perf_counter() - start, 3)
    return metrics


def evaluate_scorer(scorer: Scorer, dataset: Dataset, tokenizer: PreTrainedTokenizerBase,
                    protocol: EvalProtocol, **kwargs) -> dict[str, float]:
    """HR/NDCG/MRR@K of a scorer on a ranking dataset, plus the example count and time."""
    start = time.perf_counter()
    return _metrics([rank_dataset(scorer, dataset, tokenizer, protocol, **kwargs)], protocol, start)


def evaluate_model(model: PreTrainedModel, dataset: Dataset, tokenizer: PreTrainedTokenizerBase,
                   protocol: EvalProtocol, *, batch_size: int = 256, item_chunk: int = 262144) -> dict[str, float]:
    """Ranking metrics of ``model``; a catalogue larger than ``item_chunk`` is ranked chunk by
    chunk (:func:`~behavior_lm.evaluation.scoring.chunked_ranks`, the same ranks in bounded memory)."""
    b_ids = torch.tensor(list(behavior_token_ids(tokenizer).values()), dtype=torch.long)
    if not isinstance(model, BehaviorEnsembleModel) and not protocol.condition_on_behavior \
            and chunk_scoring_applies(model, item_chunk, b_ids):
        return _evaluate_in_chunks(model, dataset, tokenizer, protocol, batch_size, item_chunk)
    return evaluate_scorer(model_scorer(model, tokenizer, protocol), dataset, tokenizer, protocol,
                           batch_size=batch_size, vocab_size=model.get_output_embeddings().out_features,
                           desc="evaluating")


def _evaluate_in_chunks(model: PreTrainedModel, dataset: Dataset, tokenizer: PreTrainedTokenizerBase,
                        protocol: EvalProtocol, batch_size: int, item_chunk: int) -> dict[str, float]:
    start = time.perf_counter()
    device = next(model.parameters()).device
    model.eval()
    weight, bias = output_layer(model)
    candidates = item_mask(tokenizer, weight.size(0)).to(device)
    loader = DataLoader(dataset.with_format(None), batch_size=batch_size, shuffle=False,
                        collate_fn=BehaviorCollator(tokenizer.pad_token_id))
    out = []
    for batch in tqdm(loader, desc="evaluating", leave=False, disable=len(loader) < 4):
        features = next_token_features(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        ranks, _ = chunked_ranks(features, weight, bias, batch["target"].to(device), candidates,
                                 batch["seen"].to(device) if protocol.filter_seen else None, item_chunk)
        out.append(ranks.cpu().numpy())
    return _metrics(out, protocol, start)


def rank_logits(model, dataset: Dataset, protocol: EvalProtocol, pad_token_id: int, num_items: int,
                batch_size: int = 64) -> dict[str, float]:
    """Ranking metrics of a model whose ``logits`` *are* the catalogue's scores (a text ranker:
    column ``j`` is item ``j``; rows carry ``target``/``seen`` as item indices), through the same
    :func:`score_ranks` as every other scorer."""
    start = time.perf_counter()
    everything = torch.ones(num_items, dtype=torch.bool)
    loader = DataLoader(dataset.with_format(None), batch_size=batch_size, shuffle=False,
                        collate_fn=BehaviorCollator(pad_token_id))
    out = []
    model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="evaluating", leave=False, disable=len(loader) < 4):
            scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            ranks, _ = score_ranks(scores, batch["target"], everything,
                                   batch["seen"] if protocol.filter_seen else None)
            out.append(ranks.numpy())
    return _metrics(out, protocol, start)


def evaluate_baselines(names: Iterable[str], train: Dataset, dataset: Dataset,
                       tokenizer: PreTrainedTokenizerBase, protocol: EvalProtocol,
                       *, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Score the requested floors on ``dataset``."""
    results = {}
    for name in names:
        scorer = floor_scorer(build_floor(name, train, item_mask(tokenizer)))
        results[name] = evaluate_scorer(scorer, dataset, tokenizer, protocol,
                                        batch_size=batch_size, desc=name)
    return results
