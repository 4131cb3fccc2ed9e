"""``next-rating``: (history, next item) -> its value (the rating), regression (MAE, RMSE)."""
from __future__ import annotations

from behavior_lm.tasks.next_class import NextClass


class NextRating(NextClass):
    name = "next-rating"
    summary = "(history, next item) -> its rating (regression)"
    regression = True
    best_metric = "mae"
    greater_is_better = False
    headline = card_metrics = ("mae", "rmse")
    named_labels = False


TASK = NextRating()
