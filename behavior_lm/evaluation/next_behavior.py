"""Next behavior type from a causal model: the softmax over ``<pv> <cart> <fav> <buy>`` after a history.

On Taobao about 90% of events are page views and 2% purchases, so the arg-max of ``P(b | h)``
is almost always ``pv``: accuracy looks fine and the buy class is never predicted. We report two
decisions from the same probabilities:

- ``argmax``: the most likely behavior;
- ``prior-corrected``: arg-max of ``log P(b | h) - log P_train(b)`` (logit adjustment, Menon et
  al. 2021), which asks "which behavior is this history unusually likely to lead to". It
  maximises balanced accuracy when the model is calibrated, at the cost of plain accuracy.

Metrics: accuracy, balanced accuracy, per-class and macro precision/recall/F1, the confusion matrix
(rows = true, columns = predicted), and the buy class's average precision over ``P(buy | h)``.
"""
from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from behavior_lm.evaluation.metrics import accuracy, average_precision, precision_recall_f1
from behavior_lm.evaluation.scoring import next_token_scores
from behavior_lm.tokenization.behavior_tokenizer import behavior_token_ids
from behavior_lm.data.collators import BehaviorCollator


def behavior_probabilities(model: PreTrainedModel, dataset: Dataset, tokenizer: PreTrainedTokenizerBase,
                           batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(P(b | h) per example (n, B), true behavior index (n,), behavior names)``."""
    names_ids = behavior_token_ids(tokenizer)
    names, b_ids = list(names_ids), torch.tensor(list(names_ids.values()))
    index = {int(t): i for i, t in enumerate(b_ids)}
    device = next(model.parameters()).device
    probs, truth = [], []
    model.eval()
    loader = DataLoader(dataset.with_format(None), batch_size=batch_size,
                        collate_fn=BehaviorCollator(tokenizer.pad_token_id))
    for batch in loader:
        logits = next_token_scores(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        probs.append(torch.softmax(logits[:, b_ids.to(device)].float(), dim=-1).cpu().numpy())
        truth.append(np.array([index.get(int(t), -1) for t in batch["target_behavior"]]))
    return np.concatenate(probs), np.concatenate(truth), names


def last_behaviors(dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Index of each history's last behavior token (-1 if none): the "same as last" floor."""
    lookup = {t: i for i, t in enumerate(behavior_token_ids(tokenizer).values())}
    out = []
    for ids in dataset["input_ids"]:
        last = -1
        for t in reversed(ids):
            if t in lookup:
                last = lookup[t]
                break
        out.append(last)
    return np.array(out)


def training_prior(train: Dataset, tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Share of each behavior token among the training events (add-one smoothed)."""
    b_ids = list(behavior_token_ids(tokenizer).values())
    counts = np.ones(len(b_ids))
    lookup = {t: i for i, t in enumerate(b_ids)}
    for ids in train["input_ids"]:
        for t in ids:
            if t in lookup:
                counts[lookup[t]] += 1
    return counts / counts.sum()


def next_behavior_metrics(probs: np.ndarray, truth: np.ndarray, names: list[str],
                          prior: np.ndarray, last: np.ndarray | None = None) -> dict:
    """Both decisions' metrics (see the module docstring), keyed by behavior *names*, and the
    floors: the training majority behavior and "same as the last event's behavior"."""
    out: dict = {"behaviors": names, "support": {n: int((truth == i).sum()) for i, n in enumerate(names)},
                 "training_prior": {n: float(p) for n, p in zip(names, prior)}}
    labels = list(range(len(names)))
    decisions = [("argmax", probs.argmax(1)),
                 ("prior-corrected", (np.log(probs + 1e-12) - np.log(prior)).argmax(1)),
                 ("majority (floor)", np.full(len(truth), int(np.argmax(prior))))]
    if last is not None:
        decisions.append(("same as last (floor)", np.where(last >= 0, last, int(np.argmax(prior)))))
    for decision, pred in decisions:
        prf = precision_recall_f1(truth, pred, labels)
        m = {"accuracy": accuracy(truth, pred),
             "balanced_accuracy": float(np.mean([prf[f"recall_{c}"] for c in labels])),
             **{k: v for k, v in prf.items() if k.endswith("_macro")}}
        for c, n in enumerate(names):
            for what in ("precision", "recall", "f1"):
                m[f"{what}_{n}"] = prf[f"{what}_{c}"]
        confusion = np.zeros((len(names), len(names)), dtype=int)
        np.add.at(confusion, (truth, pred), 1)
        m["confusion"] = confusion.tolist()
        out[decision] = m
    if "buy" in names:
        out["average_precision_buy"] = average_precision(truth == names.index("buy"),
                                                         probs[:, names.index("buy")])
    return out


def evaluate_next_behavior(model: PreTrainedModel, dataset: Dataset, train: Dataset,
                           tokenizer: PreTrainedTokenizerBase, batch_size: int = 256) -> dict:
    probs, truth, names = behavior_probabilities(model, dataset, tokenizer, batch_size)
    return next_behavior_metrics(probs, truth, names, training_prior(train, tokenizer),
                                 last_behaviors(dataset, tokenizer))


def next_behavior_table(result: dict) -> str:
    """Markdown: one row per decision, accuracy / balanced accuracy / macro-F1 and the buy class."""
    names = result["behaviors"]
    rare = "buy" if "buy" in names else names[-1]
    lines = [f"| next behavior | accuracy | balanced acc. | macro-F1 | {rare} precision | {rare} recall | {rare} F1 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for decision in (k for k in result if isinstance(result[k], dict) and "accuracy" in result[k]):
        m = result[decision]
        lines.append(f"| {decision} | {m['accuracy']:.4f} | {m['balanced_accuracy']:.4f} | {m['f1_macro']:.4f} | "
                     f"{m[f'precision_{rare}']:.4f} | {m[f'recall_{rare}']:.4f} | {m[f'f1_{rare}']:.4f} |")
    return "\n".join(lines)
