"""prepare_data: the whole data side on real ml-100k, and its cache."""
from __future__ import annotations

from behavior_lm.data.pipeline import prepare_data
from behavior_lm.arguments import DataArguments


def test_second_run_uses_the_cache_and_gives_the_same_streams(tmp_path, monkeypatch):
    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(tmp_path / "cache"))
    # reuse the fetched ml-100k of the test session instead of fetching again
    from conftest import REPO
    shared = REPO / ".cache" / "test" / "datasets"
    if shared.is_dir():
        monkeypatch.setenv("BEHAVIOR_LM_DATA", str(shared))
    args = DataArguments(dataset="ml-100k", max_users=40, min_item_events=2, max_length=20)
    first = prepare_data(args)
    assert first.info["cache_hit"] is False
    second = prepare_data(args)
    assert second.info["cache_hit"] is True
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    for split in ("train", "validation", "test"):
        assert second.datasets[split].to_dict() == first.datasets[split].to_dict()
    assert first.datasets["test"].num_rows == 40
    changed = prepare_data(DataArguments(dataset="ml-100k", max_users=40, min_item_events=2,
                                         max_length=21))
    assert changed.info["cache_hit"] is False  # any setting that changes the output is in the key
