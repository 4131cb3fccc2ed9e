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

from behavior_lm.evaluation.scoring import is_masked_lm, next_token_scores
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


def _item_probs(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Softmax over item tokens only; ``(rows, vocab)`` with zeros elsewhere."""
    masked = logits.float().masked_fill(~candidates, float("-inf"))
    return torch.softmax(masked, dim=-1)


def _append(input_ids: torch.Tensor, token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.cat([input_ids, torch.tensor([[token_id]], dtype=input_ids.dtype,
                                             device=input_ids.device)], dim=1)
    return ids, torch.ones_like(ids)


@torch.no_grad()
def next_event_distribution(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                            input_ids: torch.Tensor, behavior: str | None = None, *,
                            behavior_ids: dict[str, int] | None = None,
                            candidates: torch.Tensor | None = None) -> NextEventDistribution:
    """The distribution after one history ``input_ids`` of shape ``(1, length)`` (no padding).

    ``behavior`` conditions on the next event's behavior (e.g. ``"buy"``); it must be one of the
    tokenizer's behavior tokens. ``None`` gives the mixture over behaviors. ``behavior_ids`` and
    ``candidates`` (the item mask) may be passed precomputed: deriving them walks the vocabulary.
    """
    behavior_ids = behavior_token_ids(tokenizer) if behavior_ids is None else behavior_ids
    names = list(behavior_ids)
    logits = next_token_scores(model, input_ids, torch.ones_like(input_ids))       # (1, V)
    if candidates is None:
        candidates = item_mask(tokenizer, logits.size(-1))
    candidates = candidates.to(logits.device)
    if not behavior_ids:  # one-behavior stream: the next token is an item
        return NextEventDistribution(_item_probs(logits, candidates)[0], None, names, None)

    b_ids = torch.tensor(list(behavior_ids.values()), device=logits.device)
    if is_masked_lm(model):
        p_behavior = None
        weights = torch.full((len(names),), 1.0 / len(names), device=logits.device)
    else:
        weights = torch.softmax(logits[0, b_ids].float(), dim=-1)
        p_behavior = {n: float(p) for n, p in zip(names, weights)}
    wanted = names if behavior is None else [behavior]
    rows = torch.cat([_append(input_ids, behavior_ids[n])[0] for n in wanted], dim=0)
    conditional = _item_probs(next_token_scores(model, rows, torch.ones_like(rows)), candidates)
    if behavior is not None:
        return NextEventDistribution(conditional[0], p_behavior, names,
                                     torch.full_like(conditional[0], names.index(behavior),
                                                     dtype=torch.long))
    joint = weights.unsqueeze(1) * conditional                                  # (B, V)
    return NextEventDistribution(joint.sum(0), p_behavior, names, joint.argmax(0))
