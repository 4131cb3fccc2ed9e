"""The model's distribution over the next event: which behavior, which item.

Streams put the behavior token before its item (``<pv> i:42 <buy> i:7``), so after a history a
causal model first predicts a behavior ``b`` and then, given ``b``, an item. Hence

- "what will they do next, behavior ``b``": ``P(item | history, b)``: append ``<b>``, read items;
- "what will they do next": the mixture ``P(item | h) = sum_b P(b | h) * P(item | h, b)``, all
  behaviors scored in one batched forward;
- on one-behavior logs the stream has no behavior tokens and ``P(item | h)`` is read directly.

Masked-item models (BERT4Rec) are trained to fill item slots only, so they give no ``P(b | h)``;
their mixture weights the behaviors uniformly. Probabilities are over item tokens only (special
and behavior tokens are never candidates).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from behavior_lm.evaluation.floors import Floor
from behavior_lm.evaluation.fusion import BehaviorEnsembleModel, floor_log_probs, fuse
from behavior_lm.evaluation.scoring import (item_log_softmax, behavior_log_probs, item_log_probs_given,
                                            next_token_scores)
from behavior_lm.tokenization.behavior_tokenizer import behavior_token_ids, item_mask


@dataclass
class NextEventDistribution:
    """One history's next event. ``items``: ``(vocab,)`` probabilities (zero off items);
    ``behaviors``: ``{name: P(b | h)}`` (``None`` when the model has no behavior distribution);
    ``item_behavior``: ``(vocab,)`` index into ``behavior_names`` of each item's most likely
    behavior (``None`` on one-behavior models)."""

    items: torch.Tensor
    behaviors: dict[str, float] | None
    behavior_names: list[str]
    item_behavior: torch.Tensor | None

    def to_cpu(self) -> "NextEventDistribution":
        return NextEventDistribution(self.items.cpu(), self.behaviors, self.behavior_names,
                                     None if self.item_behavior is None else self.item_behavior.cpu())


@torch.no_grad()
def next_event_distributions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                             input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                             behavior: str | None = None, *,
                             behavior_ids: dict[str, int] | None = None,
                             candidates: torch.Tensor | None = None) -> list[NextEventDistribution]:
    """The distribution after each history of a padded batch ``input_ids`` ``(batch, length)``
    (either padding side; ``attention_mask`` marks the real tokens), in one batched forward.

    ``behavior`` conditions on the next event's behavior (e.g. ``"buy"``); it must be one of the
    tokenizer's behavior tokens. ``None`` gives the mixture over behaviors. ``behavior_ids`` and
    ``candidates`` (the item mask) may be passed precomputed: deriving them walks the vocabulary.
    The probabilities come from the same functions the harness ranks with (``scoring.py``).
    """
    behavior_ids = behavior_token_ids(tokenizer) if behavior_ids is None else behavior_ids
    names = list(behavior_ids)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if candidates is None:
        candidates = item_mask(tokenizer, model.get_output_embeddings().out_features)
    if isinstance(model, BehaviorEnsembleModel):
        return ensemble_distributions(model, tokenizer, input_ids, mask, behavior,
                                      behavior_ids=behavior_ids, candidates=candidates)
    if not behavior_ids:  # one-behavior stream: the next token is an item
        items = item_log_softmax(next_token_scores(model, input_ids, mask), candidates).exp()
        return [NextEventDistribution(row, None, names, None) for row in items]

    b_ids = torch.tensor(list(behavior_ids.values()), device=input_ids.device)
    log_pb = behavior_log_probs(model, input_ids, mask, b_ids)                    # (B, nb) or None
    wanted = b_ids if behavior is None else b_ids[names.index(behavior)].view(1)
    conditional = item_log_probs_given(model, input_ids, mask, candidates, wanted).exp()  # (B, nb', V)
    out = []
    for r in range(input_ids.size(0)):
        p_behavior = None if log_pb is None else {n: float(p) for n, p in zip(names, log_pb[r].exp())}
        if behavior is not None:
            out.append(NextEventDistribution(conditional[r, 0], p_behavior, names,
                                             torch.full_like(conditional[r, 0], names.index(behavior),
                                                             dtype=torch.long)))
            continue
        weights = (torch.full((len(names),), 1.0 / len(names), device=conditional.device) if log_pb is None
                   else log_pb[r].exp())
        joint = weights.unsqueeze(1) * conditional[r]                                # (nb, V)
        out.append(NextEventDistribution(joint.sum(0), p_behavior, names, joint.argmax(0)))
    return out


@torch.no_grad()
def ensemble_distributions(model: BehaviorEnsembleModel, tokenizer: PreTrainedTokenizerBase,
                           input_ids: torch.Tensor, attention_mask: torch.Tensor, behavior: str | None,
                           *, behavior_ids: dict[str, int], candidates: torch.Tensor) -> list[NextEventDistribution]:
    """An ensemble's next event: each member's item distribution (models through
    :func:`next_event_distributions`, floors normalised) fused by the ensemble's method with
    :func:`~behavior_lm.evaluation.fusion.fuse`, the function the harness ranks with.

    ``items`` are the fused probabilities for ``mean`` / ``weighted``, the fused reciprocal-rank
    scores scaled to sum to one for ``rrf``. ``behaviors``: the weighted mean of ``P(b | h)`` over
    the members that have one; each item's behavior is that of the heaviest such member."""
    names = list(behavior_ids)
    weights = model.weights
    per_member: list[list[NextEventDistribution] | None] = []
    log_items = []
    for member in model.members():
        if isinstance(member, Floor):
            per_member.append(None)
            log_items.append(floor_log_probs(member, input_ids, attention_mask, candidates.numel()))
        else:
            dists = next_event_distributions(member, tokenizer, input_ids, attention_mask, behavior,
                                             behavior_ids=behavior_ids, candidates=candidates)
            per_member.append(dists)
            log_items.append(torch.stack([d.items for d in dists]).clamp(min=1e-38).log()
                             .masked_fill(~candidates.to(input_ids.device), float("-inf")))
    fused = fuse(torch.stack(log_items), weights, model.config.method, model.config.rrf_k)
    fused = fused.masked_fill(~candidates.to(fused.device), float("-inf"))
    if model.config.method in ("mean", "weighted"):
        items = fused.exp()
    else:
        scores = fused.clamp(min=0.0).nan_to_num(0.0, posinf=0.0, neginf=0.0)
        items = scores / scores.sum(dim=-1, keepdim=True).clamp(min=1e-30)
    with_b = [(w, d) for w, d in zip(weights.tolist(), per_member) if d is not None and d[0].behaviors is not None]
    with_ib = [(w, d) for w, d in zip(weights.tolist(), per_member) if d is not None and d[0].item_behavior is not None]
    heaviest = max(with_ib, key=lambda x: x[0])[1] if with_ib else None
    out = []
    for r in range(input_ids.size(0)):
        behaviors = None
        if with_b:
            total = sum(w for w, _ in with_b) or 1.0
            behaviors = {n: sum(w * d[r].behaviors[n] for w, d in with_b) / total for n in names}
        out.append(NextEventDistribution(items[r], behaviors, names,
                                         None if heaviest is None else heaviest[r].item_behavior))
    return out


def next_event_distribution(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                            input_ids: torch.Tensor, behavior: str | None = None, *,
                            behavior_ids: dict[str, int] | None = None,
                            candidates: torch.Tensor | None = None) -> NextEventDistribution:
    """The distribution after one history ``input_ids`` of shape ``(1, length)`` (no padding)."""
    return next_event_distributions(model, tokenizer, input_ids, None, behavior,
                                    behavior_ids=behavior_ids, candidates=candidates)[0]
