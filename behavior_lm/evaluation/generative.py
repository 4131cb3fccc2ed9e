"""Generative retrieval: a causal model writes the next item's code, beam search ranks items.

A semantic-id model (:mod:`behavior_lm.tokenization.semantic_ids`) scores no catalogue: it
generates. ``model.generate`` runs beam search over the ``code_length`` tokens after a history,
constrained by the prefix tree of real codes (``prefix_allowed_tokens_fn``), so every beam is an
item; the beams, best first, are the ranking. A target outside the beams has no rank: it counts as
a miss at every K (its rank is set to the catalogue size). With ``exclude`` (the user's seen
items, the protocol's seen filtering) the tree drops a branch once all items below it are seen,
so the beams are unseen items, as the id models' filtered rankings are.

Histories are left-padded for generation, and ``generate`` derives position ids from the
attention mask, so a padded row decodes exactly as it would alone (tested). A beam's score is the
sum of its tokens' log-probabilities under the model (length penalty 0: every code has the same
length), so ``exp(score)`` is the model's probability of that item.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from behavior_lm.evaluation.scoring import position_ids_for
from behavior_lm.tokenization.semantic_ids import CodeTrie


def left_pad(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (padded on either side) moved to the right edge, pads on the left."""
    lengths = attention_mask.long().sum(1)
    width = int(lengths.max()) if lengths.numel() else 0
    ids = torch.full((input_ids.size(0), max(width, 1)), pad_token_id, dtype=input_ids.dtype)
    mask = torch.zeros_like(ids)
    for r in range(input_ids.size(0)):
        real = input_ids[r][attention_mask[r].bool()]
        if real.numel():
            ids[r, width - real.numel():] = real
            mask[r, width - real.numel():] = 1
    return ids, mask


@torch.no_grad()
def generate_items(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   trie: CodeTrie, num_beams: int, pad_token_id: int,
                   exclude: Sequence[Sequence[int]] | None = None, prefill_once: bool = True
                   ) -> list[list[tuple[int, float]]]:
    """For each row, up to ``num_beams`` ``(item index, log-probability)`` pairs, best first.
    ``prefill_once``: encode each history once and give ``generate`` its cache, expanded to the
    beams (the same beams as without it, tested; ~beams times less work on long histories)."""
    ids, mask = left_pad(input_ids.cpu(), attention_mask.cpu(), pad_token_id)
    device = next(model.parameters()).device
    model.eval()
    width = ids.size(1)
    excluded = [trie.excluded_counts(row) if row is not None and len(row) else None
                for row in (exclude if exclude is not None else [None] * ids.size(0))]

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return trie.allowed(tuple(sent[width:].tolist()), excluded[batch_id])

    ids, mask = ids.to(device), mask.to(device)
    cache = None
    if prefill_once and width > 1:
        # the history is the same for every beam: encode it once per row, then share the cache
        # (``generate`` would otherwise run the prompt through the model num_beams times)
        prompt = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                       position_ids=position_ids_for(mask[:, :-1]), use_cache=True)
        cache = prompt.cache
        cache.batch_repeat_interleave(num_beams)
    out = model.generate(input_ids=ids, attention_mask=mask, num_beams=num_beams, cache=cache,
                         num_return_sequences=num_beams, max_new_tokens=trie.depth,
                         min_new_tokens=trie.depth, do_sample=False, length_penalty=0.0,
                         early_stopping=True, prefix_allowed_tokens_fn=allowed,
                         output_scores=True, return_dict_in_generate=True, pad_token_id=pad_token_id,
                         use_cache=True)
    sequences = out.sequences[:, width:].cpu().tolist()
    scores = out.sequences_scores.float().cpu().tolist()
    results: list[list[tuple[int, float]]] = []
    for r in range(ids.size(0)):
        ranked, taken = [], set()
        for b in range(r * num_beams, (r + 1) * num_beams):
            item = trie.item_of.get(tuple(sequences[b]))
            if item is None or item in taken or scores[b] != scores[b] or scores[b] == float("-inf"):
                continue                      # a dead beam (fewer items than beams)
            taken.add(item)
            ranked.append((item, scores[b]))
        results.append(ranked)
    return results


class GenerativeRanker:
    """What the Trainer's evaluation step and ``behavior-lm evaluate`` call for a semantic-id
    model: the rank of each target in its row's beams (catalogue size when absent)."""

    def __init__(self, trie: CodeTrie, num_beams: int, pad_token_id: int, filter_seen: bool = True) -> None:
        self.trie = trie
        self.num_beams = num_beams
        self.pad_token_id = pad_token_id
        self.filter_seen = filter_seen

    def ranks(self, model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              targets: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        exclude = None
        if self.filter_seen and seen is not None:
            exclude = []
            for row, target in zip(seen.tolist(), targets.tolist()):
                exclude.append([s for s in row if s >= 0 and s != target])   # the target stays rankable
        beams = generate_items(model, input_ids, attention_mask, self.trie, self.num_beams,
                               self.pad_token_id, exclude)
        miss = len(self.trie.paths)
        out = []
        for ranked, target in zip(beams, targets.tolist()):
            position = next((p for p, (item, _) in enumerate(ranked) if item == target), miss)
            out.append(position)
        return torch.tensor(out, dtype=torch.long, device=targets.device)


def evaluate_generative(model: PreTrainedModel, dataset, ranker: GenerativeRanker, ks: Sequence[int],
                        *, batch_size: int = 128) -> dict[str, float]:
    """HR/NDCG/MRR@K of a semantic-id model on code rows (``target``/``seen`` as item indices),
    with the example count, the time and the decoding time per user."""
    import time

    from torch.utils.data import DataLoader

    from behavior_lm.data.collators import BehaviorCollator
    from behavior_lm.evaluation.metrics import ranking_metrics

    start = time.perf_counter()
    loader = DataLoader(dataset.with_format(None), batch_size=batch_size, shuffle=False,
                        collate_fn=BehaviorCollator(ranker.pad_token_id))
    ranks = [ranker.ranks(model, b["input_ids"], b["attention_mask"], b["target"], b["seen"]) for b in loader]
    ranks_all = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    seconds = time.perf_counter() - start
    metrics = ranking_metrics(ranks_all.numpy(), ks)
    metrics["num_examples"] = int(ranks_all.numel())
    metrics["eval_seconds"] = round(seconds, 3)
    metrics["decode_ms_per_user"] = round(1000 * seconds / max(ranks_all.numel(), 1), 2)
    return metrics
