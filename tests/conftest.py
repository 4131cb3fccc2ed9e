"""Shared test set-up: where datasets and caches live.

- ``BEHAVIOR_LM_DATA`` defaults to ``../shared/datasets`` when that folder exists (CI always has
  it); tests that need it skip with a stated reason on a user's machine without it.
- ``BEHAVIOR_LM_CACHE`` defaults to ``.cache/test`` in the repository, so ml-100k is fetched once
  per checkout, not once per test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

os.environ.setdefault("BEHAVIOR_LM_CACHE", str(REPO / ".cache" / "test"))
if SHARED_DATASETS.is_dir():
    os.environ.setdefault("BEHAVIOR_LM_DATA", str(SHARED_DATASETS))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shared_dataset(*parts: str) -> Path:
    """Path inside ../shared/datasets, or skip the test with the reason."""
    data = Path(os.environ.get("BEHAVIOR_LM_DATA", SHARED_DATASETS))
    path = data.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (research datasets with usage terms are not shipped; "
                    "set BEHAVIOR_LM_DATA to a folder that has them)")
    return path
