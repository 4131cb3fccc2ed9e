"""Every ranking metric against a brute-force reference and against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from behavior_lm.evaluation.scoring import score_ranks
from behavior_lm.evaluation.metrics import (coverage, hit_rate, mrr, ndcg, rank_of_target,
                                            ranking_metrics)


# ----------------------------------------------------------------- brute-force reference
def brute_rank(scores: list[float], target: int, candidates: set[int], exclude: set[int]) -> int:
    """Count, one item at a time, the other candidates that score at least the target."""
    rank = 0
    for item, s in enumerate(scores):
        if item == target or item not in candidates or item in exclude:
            continue
        if s >= scores[target]:
            rank += 1
    return rank


def brute_metrics(ranks: list[int], k: int) -> tuple[float, float, float]:
    hr = sum(1 for r in ranks if r < k) / len(ranks)
    nd = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
    rr = sum(1 / (r + 1) for r in ranks if r < k) / len(ranks)
    return hr, nd, rr


# ----------------------------------------------------------------- hand-computed cases
def test_hand_computed_ranks_and_metrics():
    scores = torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.3],     # target 3: only item 2 above -> rank 1
                           [0.0, 0.2, 0.2, 0.2, 0.1]])    # target 1: ties with 2 and 3 -> rank 2
    targets = torch.tensor([3, 1])
    ranks = rank_of_target(scores, targets)
    assert ranks.tolist() == [1, 2]
    # with item 2 not a candidate, row 1 ranks first and row 2 only ties with item 3
    cand = torch.tensor([True, True, False, True, True])
    assert rank_of_target(scores, targets, cand).tolist() == [0, 1]
    cand = torch.tensor([False, True, True, True, True])
    assert rank_of_target(scores, targets, cand).tolist() == [1, 2]
    # excluding item 2 (seen) from row 1 lifts the target to rank 0
    exclude = torch.tensor([[2, -1], [-1, -1]])
    assert rank_of_target(scores, targets, cand, exclude).tolist() == [0, 2]
    ranks = [1, 2]
    assert hit_rate(ranks, 1) == 0.0
    assert hit_rate(ranks, 2) == 0.5
    assert ndcg(ranks, 5) == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    assert mrr(ranks, 5) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert mrr(ranks, 2) == pytest.approx(0.25)


def test_constant_scores_rank_target_last():
    scores = torch.zeros(3, 10)
    ranks = rank_of_target(scores, torch.tensor([0, 4, 9]))
    assert ranks.tolist() == [9, 9, 9]
    assert ranking_metrics(ranks, (5, 10)) == {f"{m}@{k}": 0.0 for k in (5, 10)
                                               for m in ("hr", "ndcg", "mrr")} | {
        "hr@10": 1.0, "ndcg@10": pytest.approx(1 / math.log2(11)), "mrr@10": pytest.approx(0.1)}


def test_target_in_history_is_not_excluded():
    scores = torch.tensor([[0.5, 0.9, 0.1]])
    assert rank_of_target(scores, torch.tensor([1]), exclude=torch.tensor([[1, 0]])).item() == 0


def test_perfect_scores():
    scores = torch.eye(4)
    ranks = rank_of_target(scores, torch.arange(4))
    assert ranks.tolist() == [0, 0, 0, 0]
    m = ranking_metrics(ranks, (1,))
    assert m == {"hr@1": 1.0, "ndcg@1": 1.0, "mrr@1": 1.0}


# ----------------------------------------------------------------- random cases vs brute force
@pytest.mark.parametrize("seed", range(8))
def test_random_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    batch, vocab = 17, 31
    # few distinct values -> many ties
    scores = rng.integers(0, 6, size=(batch, vocab)).astype(np.float32)
    cand = rng.random(vocab) < 0.8
    targets = rng.integers(0, vocab, size=batch)
    cand[targets] = True
    exclude = np.full((batch, 5), -1)
    for b in range(batch):
        n = rng.integers(0, 6)
        exclude[b, :n] = rng.choice(vocab, size=n, replace=False)
    ranks = rank_of_target(torch.tensor(scores), torch.tensor(targets), torch.tensor(cand),
                           torch.tensor(exclude))
    expected = [brute_rank(scores[b].tolist(), int(targets[b]), set(np.flatnonzero(cand)),
                           set(exclude[b][exclude[b] >= 0].tolist()))
                for b in range(batch)]
    assert ranks.tolist() == expected
    for k in (1, 5, 10, 20):
        hr, nd, rr = brute_metrics(expected, k)
        assert hit_rate(ranks, k) == pytest.approx(hr)
        assert ndcg(ranks, k) == pytest.approx(nd)
        assert mrr(ranks, k) == pytest.approx(rr)


def test_score_ranks_masks_padded_vocab_and_gives_item_ce():
    # vocab of 5 tokens, 0..1 special, 2..4 items; model pads its vocabulary to 7
    mask = torch.tensor([False, False, True, True, True])
    scores = torch.tensor([[9.0, 9.0, 1.0, 2.0, 0.0, 9.0, 9.0]])
    ranks, loss = score_ranks(scores, torch.tensor([3]), mask, None)
    assert ranks.item() == 0                         # specials and padding never compete
    logp = torch.log_softmax(torch.tensor([1.0, 2.0, 0.0]), 0)[1]
    assert loss.item() == pytest.approx(-logp.item(), rel=1e-6)


def test_coverage():
    assert coverage(np.array([[1, 2], [2, 3]]), 6) == pytest.approx(0.5)


# ----------------------------------------------------------------- classification and regression
from behavior_lm.evaluation.metrics import accuracy, mae, precision_recall_f1, rmse, roc_auc  # noqa: E402


def test_classification_hand_computed():
    t = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 0, 0]
    assert accuracy(t, p) == pytest.approx(3 / 6)
    m = precision_recall_f1(t, p, labels=[0, 1, 2])
    assert m["precision_0"] == pytest.approx(1 / 3) and m["recall_0"] == pytest.approx(1 / 2)
    assert m["f1_0"] == pytest.approx(0.4)
    assert m["precision_1"] == pytest.approx(2 / 3) and m["recall_1"] == 1.0
    assert m["precision_2"] == 0.0 and m["recall_2"] == 0.0 and m["f1_2"] == 0.0
    assert m["f1_macro"] == pytest.approx((0.4 + 0.8 + 0.0) / 3)


def test_roc_auc_hand_and_brute_force():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)          # a tie counts one half
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = rng.integers(0, 2, 40)
        s = rng.integers(0, 5, 40).astype(float)                        # many ties
        pos, neg = s[t == 1], s[t == 0]
        brute = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
        assert roc_auc(t, s) == pytest.approx(brute)


def test_precision_recall_against_brute_force():
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    m = precision_recall_f1(t, p, labels=range(4))
    for c in range(4):
        pairs = list(zip(t, p))
        tp = sum(1 for a, b in pairs if a == c and b == c)
        pred = sum(1 for _, b in pairs if b == c)
        true = sum(1 for a, _ in pairs if a == c)
        assert m[f"precision_{c}"] == pytest.approx(tp / pred if pred else 0.0)
        assert m[f"recall_{c}"] == pytest.approx(tp / true if true else 0.0)


def test_regression_errors():
    assert mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert rmse([1, 2, 3], [2, 2, 5]) == pytest.approx(math.sqrt(5 / 3))
