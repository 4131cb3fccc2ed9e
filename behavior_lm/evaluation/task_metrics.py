"""Metrics and floors for the classification, regression and token-labelling tasks.

The same plain functions as everywhere (``metrics.py``), wrapped as the Trainer's
``compute_metrics`` and applied to the floors (majority class, training mean), so the model row and
the floor rows of a table are computed identically.

A majority-class floor has ROC-AUC 0.5 by construction, which says nothing about whether a model
learned more than the obvious. The two binary e-commerce tasks therefore also get a *heuristic*
floor, the rule an analyst would write first, read off the same input tokens the model sees:

- ``purchase-intent``: the user's past buy rate (share of ``<buy>`` among the history's events);
- ``conversion-tag``: how often the browsed item appears in the history (repeat views), the
  later occurrence first on ties.

Its decision threshold is the one with the best positive-class F1 on the *training* rows, so the
floor's accuracy/F1 are as honest as its threshold-free ROC-AUC and average precision.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasets import Dataset
from transformers import EvalPrediction

from behavior_lm.data.collators import IGNORE_INDEX
from behavior_lm.tasks import Task, get_task
from behavior_lm.tokenization.behavior_tokenizer import behavior_token_ids
from behavior_lm.evaluation.metrics import (accuracy, average_precision, mae, precision_recall_f1, rmse,
                                            roc_auc)


def _task(task: str | Task) -> Task:
    return task if isinstance(task, Task) else get_task(task)


def _flatten(task: str | Task, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if _task(task).token_level:                              # (N, L, C), (N, L) -> kept tokens
        keep = labels != IGNORE_INDEX
        return logits[keep], labels[keep]
    return logits, labels


def score_predictions(task: str | Task, logits: np.ndarray, labels: np.ndarray,
                      num_classes: int) -> dict[str, float]:
    """Task metrics from raw model outputs (``logits``) and gold ``labels``."""
    logits, labels = _flatten(task, np.asarray(logits), np.asarray(labels))
    if _task(task).regression:
        pred = logits.reshape(-1)
        return {"mae": mae(labels, pred), "rmse": rmse(labels, pred), "num_examples": int(labels.size)}
    return classification_scores(logits, labels, num_classes)


def classification_scores(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, per-class and macro precision/recall/F1 (and ROC-AUC, average precision for two
    classes) of flat ``(N, C)`` logits against ``(N,)`` labels."""
    labels = labels.astype(np.int64)
    pred = logits.argmax(-1)
    out = {"accuracy": accuracy(labels, pred), "num_examples": int(labels.size)}
    out.update(precision_recall_f1(labels, pred, labels=range(num_classes)))
    if num_classes == 2:
        prob = positive_probability(logits)
        out["roc_auc"] = roc_auc(labels == 1, prob)
        out["average_precision"] = average_precision(labels == 1, prob)
    return out


def make_task_metrics(task: str | Task, num_classes: int):
    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        return score_predictions(task, pred.predictions, pred.label_ids, num_classes)
    return compute_metrics


def _labels(ds: Dataset, task: str | Task) -> np.ndarray:
    if _task(task).token_level:
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in ds["labels"]])
        return flat[flat != IGNORE_INDEX]
    return np.asarray(ds["labels"])


HEURISTIC_NAMES = {"buy-rate": "buy rate (heuristic)", "repeat-views": "repeat views (heuristic)"}


def heuristic_scores(task: str | Task, ds: Dataset, tokenizer, intent_behavior: str = "buy") -> np.ndarray | None:
    """The heuristic floor's score of every labelled example (in :func:`_labels` order), or
    None when the task has no heuristic (or the stream lacks what it reads)."""
    heuristic = _task(task).heuristic
    if heuristic == "buy-rate":
        by_name = behavior_token_ids(tokenizer)
        target = by_name.get(intent_behavior)
        b_ids = np.array(list(by_name.values()), dtype=np.int64)
        if target is None:
            return None                                   # behavior-blind stream
        out = []
        for ids in ds["input_ids"]:
            ids = np.asarray(ids, dtype=np.int64)
            events = max(int(np.isin(ids, b_ids).sum()), 1)
            out.append(float((ids == target).sum()) / events)
        return np.asarray(out)
    if heuristic == "repeat-views":
        out = []
        for ids, labels in zip(ds["input_ids"], ds["labels"]):
            ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
            for pos in np.flatnonzero(labels != IGNORE_INDEX):
                out.append(float((ids == ids[pos]).sum()) + pos / (ids.size + 1.0))
        return np.asarray(out)
    return None


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold (predict positive when score > it) with the best positive-class F1."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    tp = np.cumsum(y)
    k = np.arange(1, s.size + 1)
    f1 = 2 * tp / (k + max(int(y.sum()), 1))
    last_of_tie = np.append(s[1:] != s[:-1], True)        # cut only between different scores
    f1 = np.where(last_of_tie, f1, -1.0)
    best = int(f1.argmax())
    return float((s[best] + s[best + 1]) / 2) if best + 1 < s.size else float(s[best] - 1.0)


def positive_probability(logits: np.ndarray) -> np.ndarray:
    """P(class 1) from two-class logits (softmax), any leading shape."""
    z = logits - logits.max(-1, keepdims=True)
    return np.exp(z[..., 1]) / np.exp(z).sum(-1)


def tuned_threshold_metrics(task: str | Task, val_logits: np.ndarray, val_labels: np.ndarray,
                            test_logits: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
    """Binary tasks with a rare positive class: argmax rarely predicts it, so also report the
    positive-class precision/recall/F1 at the probability threshold with the best F1 on
    *validation* (``*_tuned``; the threshold is ``tuned_threshold``)."""
    v_logits, v_labels = _flatten(task, np.asarray(val_logits), np.asarray(val_labels))
    t_logits, t_labels = _flatten(task, np.asarray(test_logits), np.asarray(test_labels))
    threshold = best_f1_threshold(positive_probability(v_logits), v_labels)
    pred = (positive_probability(t_logits) > threshold).astype(np.int64)
    m = precision_recall_f1(t_labels.astype(np.int64), pred, labels=range(2))
    return {"tuned_threshold": threshold, "precision_1_tuned": m["precision_1"],
            "recall_1_tuned": m["recall_1"], "f1_1_tuned": m["f1_1"], "f1_macro_tuned": m["f1_macro"]}


def floor_metrics(task: str | Task, train: Dataset, evaluate_on: Dataset, num_classes: int, tokenizer=None,
                  intent_behavior: str = "buy") -> dict[str, dict]:
    """Majority class (classification) or the training mean (regression), scored like a model;
    plus the heuristic floor of the binary e-commerce tasks when a tokenizer is given."""
    y_train, y_eval = _labels(train, task), _labels(evaluate_on, task)
    if _task(task).regression:
        const = np.full((y_eval.size, 1), float(y_train.mean()))
        return {"training mean": score_predictions(task, const, y_eval, num_classes)}
    majority = int(np.bincount(y_train.astype(np.int64), minlength=num_classes).argmax())
    const = np.zeros((y_eval.size, num_classes))
    const[:, majority] = 1.0
    out = {"majority class": classification_scores(const, y_eval, num_classes)}
    if tokenizer is not None and num_classes == 2:
        s_train = heuristic_scores(task, train, tokenizer, intent_behavior)
        if s_train is not None and s_train.size:
            threshold = best_f1_threshold(s_train, y_train)
            s_eval = heuristic_scores(task, evaluate_on, tokenizer, intent_behavior)
            logits = np.stack([np.zeros_like(s_eval), s_eval - threshold], axis=1)
            name = HEURISTIC_NAMES[_task(task).heuristic]
            m = classification_scores(logits, y_eval, num_classes)
            m.update({f"{k}_tuned": m[k] for k in ("precision_1", "recall_1", "f1_1", "f1_macro")})
            out[name] = m                      # its threshold is tuned already (on training rows)
    return out


def task_table(rows: dict[str, dict], task: str | Task, class_names: Sequence[str]) -> str:
    """Markdown table of task metrics, one row per model/floor."""
    if _task(task).regression:
        cols = ["mae", "rmse"]
    else:
        cols = ["accuracy", "precision_macro", "recall_macro", "f1_macro"]
        cols += [f"f1_{i}" for i in range(len(class_names))]
        if len(class_names) == 2:
            cols += ["f1_1_tuned", "roc_auc", "average_precision"]
    names = {f"f1_{i}": f"F1 {c}" for i, c in enumerate(class_names)}
    names["f1_1_tuned"] = f"F1 {class_names[-1]} (tuned threshold)"
    head = "| model | " + " | ".join(names.get(c, c.replace("_", " ")) for c in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" if c in m else "" for c in cols) + " |")
    return "\n".join(lines)
