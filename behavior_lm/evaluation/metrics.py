"""Ranking and classification metrics: one implementation used by the harness, the Trainer hook,
the baselines and the ``evaluate`` modules, so every number in a table means the same thing.

Ranks are 0-based and pessimistic: a target's rank is the number of *other* candidates that score
at least as high as it does. Ties therefore count against the target, and a model that outputs
one constant score ranks every target last and gets 0, instead of getting lucky on index order.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20)


def rank_of_target(
    scores: torch.Tensor,
    targets: torch.Tensor,
    candidates: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pessimistic 0-based rank of each target among the candidates.

    Args:
        scores: ``(batch, vocab)`` scores of every token for the next position.
        targets: ``(batch,)`` token id of the true next item.
        candidates: ``(vocab,)`` bool, True for tokens that may be ranked (item tokens). The target
            is always a candidate. ``None`` means every token.
        exclude: ``(batch, n)`` token ids to remove from the ranking (seen items), padded with -1.
            The target itself is never excluded (repeat consumption stays rankable).

    Returns ``(batch,)`` long: number of other candidates scoring ``>=`` the target.
    """
    scores = scores.float()
    batch = torch.arange(scores.size(0), device=scores.device)
    valid = torch.ones_like(scores, dtype=torch.bool)                       # (B, V)
    if candidates is not None:
        valid &= candidates.to(scores.device).unsqueeze(0)
    if exclude is not None and exclude.numel() > 0:
        ex = exclude.to(scores.device)
        rows = batch.unsqueeze(1).expand_as(ex)                             # (B, n)
        keep = ex >= 0
        valid[rows[keep], ex[keep]] = False
    valid[batch, targets] = True
    target_scores = scores[batch, targets].unsqueeze(1)                     # (B, 1)
    at_least = (scores >= target_scores) & valid                            # (B, V)
    return at_least.sum(dim=1) - 1                                          # minus the target itself


def _as_array(ranks: Iterable[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    return np.asarray(ranks, dtype=np.int64)


def hit_rate(ranks, k: int) -> float:
    """HR@K (= Recall@K with one target): share of targets ranked in the top K."""
    r = _as_array(ranks)
    return float((r < k).mean()) if r.size else 0.0


def ndcg(ranks, k: int) -> float:
    """NDCG@K with one relevant item: ``1 / log2(rank + 2)`` inside the top K, else 0."""
    r = _as_array(ranks)
    if not r.size:
        return 0.0
    gains = np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)
    return float(gains.mean())


def mrr(ranks, k: int) -> float:
    """MRR@K: ``1 / (rank + 1)`` inside the top K, else 0."""
    r = _as_array(ranks)
    if not r.size:
        return 0.0
    return float(np.where(r < k, 1.0 / (r + 1.0), 0.0).mean())


def ranking_metrics(ranks, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``{"hr@5": .., "ndcg@5": .., "mrr@5": .., ...}`` for every K."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
        out[f"mrr@{k}"] = mrr(ranks, k)
    return out


def coverage(top_items: np.ndarray, num_candidates: int) -> float:
    """Catalogue coverage: distinct items in all top-K lists / number of candidate items."""
    if num_candidates <= 0:
        return 0.0
    return float(len(np.unique(np.asarray(top_items).ravel())) / num_candidates)


# --------------------------------------------------------------------- classification / regression
def accuracy(y_true, y_pred) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float((t == p).mean()) if t.size else 0.0


def precision_recall_f1(y_true, y_pred, labels: Sequence[int] | None = None) -> dict[str, float]:
    """Per-class precision/recall/F1 and their macro averages.

    A class never predicted has precision 0 (not NaN), a class absent from ``y_true`` recall 0, so
    a model that ignores the rare class (e.g. ``buy``) is punished in the macro average.
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    labels = list(labels) if labels is not None else sorted(set(t.tolist()) | set(p.tolist()))
    out: dict[str, float] = {}
    for c in labels:
        tp = float(((p == c) & (t == c)).sum())
        prec = tp / float((p == c).sum()) if (p == c).any() else 0.0
        rec = tp / float((t == c).sum()) if (t == c).any() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        out[f"precision_{c}"], out[f"recall_{c}"], out[f"f1_{c}"] = prec, rec, f1
    for m in ("precision", "recall", "f1"):
        out[f"{m}_macro"] = float(np.mean([out[f"{m}_{c}"] for c in labels])) if labels else 0.0
    return out


def roc_auc(y_true, scores) -> float:
    """Binary ROC-AUC as the probability that a positive outscores a negative (ties count 1/2).

    Computed from average ranks (Mann-Whitney U), ``O(n log n)``. NaN when one class is absent.
    """
    t = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(y_true, scores) -> float:
    """Area under the precision-recall curve, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct
    score thresholds (as scikit-learn's ``average_precision_score``): a tie group is one
    threshold, so a constant scorer gets the positive rate. NaN without positives."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last_of_group = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]      # end of each tie group
    tp = np.cumsum(y)[last_of_group]
    precision = tp / (last_of_group + 1.0)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mae(y_true, y_pred) -> float:
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return float(np.abs(t - p).mean()) if t.size else 0.0


def rmse(y_true, y_pred) -> float:
    t, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    return float(np.sqrt(((t - p) ** 2).mean())) if t.size else 0.0
