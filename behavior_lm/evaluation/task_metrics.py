"""Metrics and floors for the classification, regression and token-labelling tasks.

The same plain functions as everywhere (``metrics.py``), wrapped as the Trainer's
``compute_metrics`` and applied to the floors (majority class, training mean), so the model row and
the floor rows of a table are computed identically.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasets import Dataset
from transformers import EvalPrediction

from behavior_lm.data.tasks import IGNORE, TOKEN_TASKS
from behavior_lm.evaluation.metrics import (accuracy, average_precision, mae, precision_recall_f1, rmse,
                                            roc_auc)


def _flatten(task: str, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if task in TOKEN_TASKS:                                  # (N, L, C), (N, L) -> kept tokens
        keep = labels != IGNORE
        return logits[keep], labels[keep]
    return logits, labels


def score_predictions(task: str, logits: np.ndarray, labels: np.ndarray,
                      num_classes: int) -> dict[str, float]:
    """Task metrics from raw model outputs (``logits``) and gold ``labels``."""
    logits, labels = _flatten(task, np.asarray(logits), np.asarray(labels))
    if task == "next-rating":
        pred = logits.reshape(-1)
        return {"mae": mae(labels, pred), "rmse": rmse(labels, pred), "num_examples": int(labels.size)}
    labels = labels.astype(np.int64)
    pred = logits.argmax(-1)
    out = {"accuracy": accuracy(labels, pred), "num_examples": int(labels.size)}
    out.update(precision_recall_f1(labels, pred, labels=range(num_classes)))
    if num_classes == 2:
        shifted = logits - logits.max(-1, keepdims=True)
        prob = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
        out["roc_auc"] = roc_auc(labels == 1, prob[:, 1])
        out["average_precision"] = average_precision(labels == 1, prob[:, 1])
    return out


def make_task_metrics(task: str, num_classes: int):
    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        return score_predictions(task, pred.predictions, pred.label_ids, num_classes)
    return compute_metrics


def _labels(ds: Dataset, task: str) -> np.ndarray:
    if task in TOKEN_TASKS:
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in ds["labels"]])
        return flat[flat != IGNORE]
    return np.asarray(ds["labels"])


def floor_metrics(task: str, train: Dataset, evaluate_on: Dataset, num_classes: int) -> dict[str, dict]:
    """Majority class (classification) or the training mean (regression), scored like a model."""
    y_train, y_eval = _labels(train, task), _labels(evaluate_on, task)
    if task == "next-rating":
        const = np.full((y_eval.size, 1), float(y_train.mean()))
        return {"training mean": score_predictions(task, const, y_eval, num_classes)}
    majority = int(np.bincount(y_train.astype(np.int64), minlength=num_classes).argmax())
    const = np.zeros((y_eval.size, num_classes))
    const[:, majority] = 1.0
    return {"majority class": score_predictions("next-class", const, y_eval, num_classes)}


def task_table(rows: dict[str, dict], task: str, class_names: Sequence[str]) -> str:
    """Markdown table of task metrics, one row per model/floor."""
    if task == "next-rating":
        cols = ["mae", "rmse"]
    else:
        cols = ["accuracy", "precision_macro", "recall_macro", "f1_macro"]
        cols += [f"f1_{i}" for i in range(len(class_names))]
        if len(class_names) == 2:
            cols += ["roc_auc", "average_precision"]
    names = {f"f1_{i}": f"F1 {c}" for i, c in enumerate(class_names)}
    head = "| model | " + " | ".join(names.get(c, c.replace("_", " ")) for c in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" if c in m else "" for c in cols) + " |")
    return "\n".join(lines)
