"""Our metrics as local ``evaluate`` modules (work offline; ``evaluate.load`` of a Hub id does not).

``evaluate.load(metric_path("ranking"))`` gives an ``evaluate.Metric`` whose ``compute`` calls the
same functions the harness uses (``behavior_lm.evaluation.metrics``), so a number from
``evaluate`` and a number from ``behavior-lm evaluate`` cannot disagree.
"""
from __future__ import annotations

from pathlib import Path

MODULES = ("ranking", "classification", "regression")


def metric_path(name: str) -> str:
    """Folder to pass to ``evaluate.load``: ``ranking``, ``classification`` or ``regression``."""
    if name not in MODULES:
        raise ValueError(f"unknown behavior-lm metric {name!r}; known: {', '.join(MODULES)}")
    return str(Path(__file__).with_name(name))
