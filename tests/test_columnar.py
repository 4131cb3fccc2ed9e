"""The columnar row builder (``behavior_lm.data.columnar``) gives exactly the rows, tokenizer and
counts of the general path (sequences -> leave-one-out examples -> serialised streams), on real
logs and on hostile ones: same vocabulary, same ids, same row order, same columns and types."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pyarrow as pa
import pytest

from behavior_lm.arguments import DataArguments
from behavior_lm.data import columnar, pipeline, preprocess, sources, splits
from behavior_lm.data.events import EventLog
from behavior_lm.data.streams import StreamFormat, build_dataset_dict
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer

SHARED = Path(os.environ.get("BEHAVIOR_LM_DATA", "/nonexistent"))
needs_shared = pytest.mark.skipif(not (SHARED / "taobao").is_dir(),
                                  reason="needs ../shared/datasets (Taobao, Beauty; CI has it)")


def general(log: EventLog, args: DataArguments, template: str):
    """The general path, written out: what prepare_data did for every recipe before."""
    sequences = pipeline.clean_sequences(log, args)
    split = splits.leave_one_out(sequences, source=log.source)
    behaviors = list(dict.fromkeys(b for s in sequences for b in s.behaviors))
    with_behaviors = args.use_behaviors if args.use_behaviors is not None else len(behaviors) > 1
    fmt = StreamFormat(behaviors=with_behaviors)
    tok = build_tokenizer((i for s in sequences for i in s.items), behaviors if with_behaviors else (),
                          template=template, max_length=args.max_length)
    rows = build_dataset_dict(split, tok, max_length=args.max_length, fmt=fmt,
                              train_windows_mode=args.train_windows)
    return rows, tok, split.summary(), behaviors


def assert_same(log: EventLog, args: DataArguments, template: str) -> None:
    rows, tok, summary, behaviors = general(log, args, template)
    built = columnar.build(columnar.Events.of(pipeline.clean_log(log, args)), args, template)
    assert built.tokenizer.get_vocab() == tok.get_vocab()
    assert built.split_summary == summary and built.behaviors == behaviors
    assert list(built.rows) == list(rows)
    for name in rows:
        assert built.rows[name].features == rows[name].features, name
        got, want = built.rows[name].data.table, rows[name].data.table
        assert got.schema.remove_metadata() == want.schema.remove_metadata(), name
        for column in want.column_names:
            assert got.column(column).to_pylist() == want.column(column).to_pylist(), (name, column)


def ml100k() -> EventLog:
    return sources.load_events("ml-100k")


@pytest.mark.parametrize("template,windows,max_length", [("causal", "all", 50), ("masked", "all", 20),
                                                         ("causal", "last", 200)])
def test_ml100k_rows_equal_the_general_path(template, windows, max_length):
    args = DataArguments(dataset="ml-100k", max_length=max_length, train_windows=windows, min_user_events=5)
    assert_same(ml100k(), args, template)


@needs_shared
@pytest.mark.parametrize("use_behaviors,max_length", [(True, 21), (None, 50), (False, 9)])
def test_taobao_multi_behavior_rows_equal_the_general_path(use_behaviors, max_length):
    """Two tokens an event (``<pv> i:42``), odd and even max_length, behaviors on and off."""
    log = sources.load_events("taobao")
    args = DataArguments(dataset="taobao", max_length=max_length, use_behaviors=use_behaviors, max_users=400,
                         min_user_events=3, max_history=120)
    assert_same(log, args, "causal")
    assert_same(log, dataclasses.replace(args, train_windows="last"), "masked")


@needs_shared
def test_beauty_sequence_file_rows_equal_the_general_path():
    log = sources.load_events("beauty")
    assert_same(log, DataArguments(dataset="beauty", max_length=50), "causal")


def test_hostile_ids_ties_and_file_order():
    """Ids that look like specials or prefixes, brackets, emoji; equal timestamps (file order
    decides); users interleaved in the file (first line decides their order); popularity ties
    (first appearance decides)."""
    ids = ["[PAD]", "i:5", "[MASK]", "a]b[", "\U0001F600", "x" * 300, "[SEP]", "5"]
    rows = []
    for n in range(40):
        user = f"u{n % 7}" if n % 5 else "[CLS]"
        rows.append((user, ids[(n * 3) % len(ids)], ["pv", "buy"][n % 3 == 0], 1000 + (n // 4)))
    table = pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                      "behavior": [r[2] for r in rows], "timestamp": pa.array([r[3] for r in rows], pa.int64()),
                      "value": pa.array([None] * len(rows), pa.float64()),
                      "line": pa.array(range(2, len(rows) + 2), pa.int64())})
    log = EventLog(table, source="hostile.csv")
    for use_behaviors in (None, False):
        args = DataArguments(dataset="hostile", max_length=7, use_behaviors=use_behaviors)
        assert_same(log, args, "causal")
        assert_same(log, args, "masked")


def test_short_user_error_names_the_line():
    table = pa.table({"user_id": ["a", "a", "a", "b", "b"], "item_id": ["1", "2", "3", "1", "2"],
                      "behavior": ["pv"] * 5, "timestamp": pa.array([1, 2, 3, 1, 2], pa.int64()),
                      "value": pa.array([None] * 5, pa.float64()), "line": pa.array([2, 3, 4, 5, 6], pa.int64())})
    log = EventLog(table, source="short.csv")
    with pytest.raises(Exception) as general_error:
        general(log, DataArguments(dataset="x"), "causal")
    with pytest.raises(type(general_error.value)) as columnar_error:
        columnar.Events.of(pipeline.clean_log(log, DataArguments(dataset="x")))
    assert str(columnar_error.value) == str(general_error.value)
    assert "short.csv:5" in str(columnar_error.value) and "'b'" in str(columnar_error.value)


def test_prepare_data_takes_the_columnar_path_only_where_it_applies():
    base = DataArguments(dataset="ml-100k")
    assert columnar.applies(base, True)
    for change in ({"split": "temporal"}, {"time_gaps": True}, {"session_gap": 1800}, {"cold_items": 10},
                   {"target_behavior": "buy"}, {"item_side": "category"}):
        assert not columnar.applies(dataclasses.replace(base, **change), True), change
    assert not columnar.applies(base, False)


def test_prepared_rows_are_memory_mapped_shards_on_the_first_run_too(tmp_path, monkeypatch):
    """The first (cache-miss) run trains from the saved Arrow shards, memory-mapped, exactly as a
    cache hit does, so rows that do not fit in memory still train; the rows are the ones built."""
    import numpy as np

    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,behavior,timestamp"] + [
        f"u{u},i{rng.integers(0, 40)},{rng.choice(['pv', 'buy'])},{1000 + t}" for u in range(30) for t in range(12)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    args = DataArguments(dataset="tiny-log", data_path=str(tmp_path / "log.csv"), max_length=9)
    first = pipeline.prepare_data(args)
    again = pipeline.prepare_data(args)
    in_memory = pipeline.prepare_data(dataclasses.replace(args, cache=False))
    assert not first.info["cache_hit"] and again.info["cache_hit"]
    for name, ds in first.datasets.items():
        assert ds.cache_files and all(Path(f["filename"]).is_relative_to(tmp_path / "cache") for f in ds.cache_files)
        assert ds.data.table.equals(again.datasets[name].data.table)
        assert ds.data.table.equals(in_memory.datasets[name].data.table)
        assert not in_memory.datasets[name].cache_files
