"""Start a model's output bias at the items' log frequency in the training rows.

Why: the first thing a next-item model learns is popularity. Where the output layer has a bias
(BERT4Rec's ``BertForMaskedLM`` head), starting it at ``log P(item)`` means the model predicts
popularity from step one, and the gradient that reaches the item embeddings is only what the
context adds. With the bias at zero, popularity is learned through the (tied) item embeddings
instead: at a ``[MASK]`` position the hidden state is nearly the same for every row at
initialisation, so every item row's gradient points along that one vector, and Adam, which
scales each coordinate's step to about the learning rate whatever the gradient's size, moves
every row (rare items as far as popular ones) onto it within ~40 steps. On ML-1M 73% of the item
embeddings' energy then lies on one direction, the context items all look alike to attention,
and the model stays at the unigram entropy for thousands of steps (docs/benchmarks.md,
"BERT4Rec's plateau"). Causal models are spared the worst of it because the current item is in
view at every position, so their hidden states differ from the start.

Models whose output layer has no bias (GPT-2, Llama, GRU/LSTM as built here) are left as they are.
"""
from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel

OUTPUT_BIAS_INITS = ("prior", "zero")


def output_bias(model: PreTrainedModel) -> torch.nn.Parameter | None:
    """The bias added to the vocabulary logits, if the model has one (BERT's lives in
    ``cls.predictions.bias``, shared with its decoder)."""
    predictions = getattr(getattr(model, "cls", None), "predictions", None)
    bias = getattr(predictions, "bias", None)
    if bias is None:
        bias = getattr(model.get_output_embeddings(), "bias", None)
    return bias if isinstance(bias, torch.nn.Parameter) else None


def item_log_prior(train: Dataset, items: torch.Tensor, column: str = "input_ids") -> torch.Tensor:
    """``(vocab,)`` ``log P(item)`` from the item tokens of the training rows (add-one smoothed);
    tokens that are not items get the smallest item value, so that no special token starts above
    any item. ``items``: ``(vocab,)`` bool, True at item tokens."""
    vocab = items.numel()
    counts = np.zeros(vocab, dtype=np.float64)
    for batch in train.iter(batch_size=4096):
        rows = batch[column]
        if rows:
            flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
            counts += np.bincount(flat[(flat >= 0) & (flat < vocab)], minlength=vocab)
    counts = torch.as_tensor(counts) + 1.0
    mask = items.bool()
    prior = torch.log(counts / counts[mask].sum())
    floor = prior[mask].min() if bool(mask.any()) else torch.tensor(0.0, dtype=prior.dtype)
    return torch.where(mask, prior, floor).float()


def init_output_bias(model: PreTrainedModel, train: Dataset, items: torch.Tensor, how: str = "prior") -> str:
    """Set the output bias as ``how`` says; returns what was done (recorded in ``config.json``):
    ``"prior"``, ``"zero"``, or ``"none"`` when the model has no output bias."""
    if how not in OUTPUT_BIAS_INITS:
        raise ValueError(f"output_bias_init must be one of {OUTPUT_BIAS_INITS}, got {how!r}")
    bias = output_bias(model)
    if bias is None:
        return "none"
    with torch.no_grad():
        if how == "zero":
            bias.zero_()
        else:
            n = min(bias.numel(), items.numel())
            prior = item_log_prior(train, items[:n])
            bias.fill_(float(prior.min()))
            bias[:n] = prior.to(bias.dtype)
    return how
