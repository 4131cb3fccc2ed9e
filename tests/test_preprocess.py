"""Preprocessing steps on small hand-made logs: exact contents, order and error messages."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from behavior_lm.data.events import EventLog
from behavior_lm.data.preprocess import (
    UserSequence,
    drop_duplicates,
    filter_by_value,
    k_core,
    prepare,
    sort_events,
    to_sequences,
    truncate_history,
)
from behavior_lm.errors import DataError, RecipeError

SOURCE = "ratings.dat"


def make_log(rows, source: str = SOURCE, **extra) -> EventLog:
    """rows: (user_id, item_id, timestamp[, value]); line = 1-based row number."""
    cols = ["user_id", "item_id", "timestamp", "value"][: len(rows[0])] if rows else \
        ["user_id", "item_id", "timestamp"]
    df = pd.DataFrame(rows, columns=cols)
    for k, v in extra.items():
        df[k] = v
    return EventLog.from_pandas(df, source)


def triples(log: EventLog) -> list[tuple[str, str, int]]:
    df = log.to_pandas()
    return list(zip(df.user_id, df.item_id, df.timestamp.astype(int)))


def col(log: EventLog, name: str) -> list:
    return log.table.column(name).to_pylist()


# --------------------------------------------------------------------------- sort
def test_sort_events_orders_by_user_then_time_and_keeps_file_order_on_ties():
    log = make_log([
        ("u2", "x", 5),   # line 1
        ("u1", "a", 20),  # line 2
        ("u1", "b", 20),  # line 3
        ("u1", "c", 10),  # line 4
        ("u1", "d", 20),  # line 5
        ("u2", "y", 1),   # line 6
    ])
    out = sort_events(log)
    assert triples(out) == [("u1", "c", 10), ("u1", "a", 20), ("u1", "b", 20), ("u1", "d", 20),
                            ("u2", "y", 1), ("u2", "x", 5)]
    assert col(out, "line") == [4, 2, 3, 5, 6, 1]
    assert out.source == SOURCE


def test_sort_events_ties_follow_line_not_row_position():
    # Rows stored out of line order: a tie on the timestamp is broken by the source line.
    log = make_log([("u1", "late-line", 7), ("u1", "early-line", 7)], line=[9, 3])
    assert col(sort_events(log), "item_id") == ["early-line", "late-line"]


# --------------------------------------------------------------------------- dedupe
def test_drop_duplicates_keeps_first_and_compares_all_event_fields():
    log = make_log([
        ("u1", "a", 1, 5.0),   # line 1: kept
        ("u1", "a", 1, 5.0),   # line 2: duplicate of 1
        ("u1", "a", 1, 4.0),   # line 3: other value -> kept
        ("u1", "a", 2, 5.0),   # line 4: other time -> kept
        ("u2", "a", 1, 5.0),   # line 5: other user -> kept
        ("u1", "a", 1, None),  # line 6: kept
        ("u1", "a", 1, None),  # line 7: duplicate of 6 (nulls equal)
        ("u1", "a", 1, 5.0),   # line 8: duplicate of 1
    ])
    out = drop_duplicates(log)
    assert col(out, "line") == [1, 3, 4, 5, 6]


def test_drop_duplicates_distinguishes_behavior():
    log = make_log([("u1", "a", 1), ("u1", "a", 1), ("u1", "a", 1)],
                   behavior=["pv", "buy", "pv"])
    out = drop_duplicates(log)
    assert col(out, "line") == [1, 2]
    assert col(out, "behavior") == ["pv", "buy"]


# --------------------------------------------------------------------------- value threshold
def test_filter_by_value_keeps_at_or_above_threshold():
    log = make_log([("u1", "a", 1, 3.0), ("u1", "b", 2, 4.0), ("u1", "c", 3, 5.0),
                    ("u2", "d", 1, 3.5)])
    assert col(filter_by_value(log, 4), "item_id") == ["b", "c"]
    assert col(filter_by_value(log, 3.5), "item_id") == ["b", "c", "d"]
    assert len(filter_by_value(log, None)) == 4


def test_filter_by_value_without_threshold_keeps_null_values():
    log = make_log([("u1", "a", 1), ("u1", "b", 2)])
    assert len(filter_by_value(log, None)) == 2


def test_filter_by_value_null_value_is_an_error_naming_file_line_field():
    log = make_log([("u1", "a", 1, 5.0), ("u1", "b", 2, None), ("u1", "c", 3, None)])
    with pytest.raises(DataError) as err:
        filter_by_value(log, 4.0)
    e = err.value
    assert (e.path, e.line, e.field) == (SOURCE, 2, "value")
    assert str(e).startswith(f"{SOURCE}:2: field 'value': ")
    assert "min_value=4.0" in str(e) and "2 event(s)" in str(e)


# --------------------------------------------------------------------------- k-core
def test_k_core_iterates_to_a_fixpoint():
    log = make_log([
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3),
        ("u2", "a", 1), ("u2", "b", 2),
        ("u3", "c", 1), ("u3", "d", 2),   # d is rare
        ("u4", "a", 1), ("u4", "b", 2),
    ])
    # One pass (users, then items) only drops item d. That leaves u3 with 1 event; dropping u3
    # leaves item c with 1 event (u1); dropping it is stable: u1 still has a, b.
    out = k_core(log, min_user_events=2, min_item_events=2)
    assert triples(out) == [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2),
                            ("u4", "a", 1), ("u4", "b", 2)]
    # Every remaining user and item meets its threshold.
    df = out.to_pandas()
    assert df.groupby("user_id").size().min() >= 2
    assert df.groupby("item_id").size().min() >= 2


def test_k_core_can_remove_everything_and_zero_or_one_disables():
    log = make_log([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3)])
    assert len(k_core(log, 0, 0)) == 3
    assert len(k_core(log, 1, 1)) == 3
    assert triples(k_core(log, 2, 0)) == [("u1", "a", 1), ("u1", "b", 2)]
    assert triples(k_core(log, 0, 2)) == [("u1", "a", 1), ("u2", "a", 3)]
    # u2 goes (1 event) -> a has 1 event -> everything goes.
    assert len(k_core(log, 2, 2)) == 0


def test_k_core_rejects_negative_thresholds():
    log = make_log([("u1", "a", 1)])
    with pytest.raises(RecipeError):
        k_core(log, -1, 0)


# --------------------------------------------------------------------------- truncate
def test_truncate_history_keeps_most_recent_events_per_user():
    log = make_log([
        ("u1", "a", 5), ("u1", "b", 1), ("u1", "c", 4), ("u1", "d", 2), ("u1", "e", 3),
        ("u2", "x", 1),
    ])
    out = truncate_history(log, 2)
    assert triples(out) == [("u1", "c", 4), ("u1", "a", 5), ("u2", "x", 1)]
    assert triples(truncate_history(log, None)) == triples(sort_events(log))
    with pytest.raises(RecipeError):
        truncate_history(log, 0)


# --------------------------------------------------------------------------- sequences
def test_to_sequences_users_in_first_line_order_events_in_time_order():
    log = make_log([
        ("zed", "a", 30, 1.0),   # line 1: zed first in the file (sorts last by id)
        ("amy", "b", 10, None),  # line 2
        ("zed", "c", 20, 2.0),   # line 3
        ("amy", "d", 10, 3.0),   # line 4: tie with line 2
    ], behavior=["pv", "buy", "pv", "cart"])
    seqs = to_sequences(log)
    assert [s.user_id for s in seqs] == ["zed", "amy"]
    zed, amy = seqs
    assert zed == UserSequence("zed", ["c", "a"], ["pv", "pv"], [20, 30], [2.0, 1.0], [3, 1])
    assert amy == UserSequence("amy", ["b", "d"], ["buy", "cart"], [10, 10], [None, 3.0], [2, 4])
    assert len(zed) == 2
    assert zed.slice(1, None) == UserSequence("zed", ["a"], ["pv"], [30], [1.0], [1])
    assert len(zed.slice(0, 0)) == 0
    assert to_sequences(make_log([])) == []


# --------------------------------------------------------------------------- prepare
def test_prepare_runs_steps_in_order():
    log = make_log([
        ("u1", "a", 1, 5.0), ("u1", "a", 1, 5.0),   # duplicate: only counts once when deduped
        ("u1", "b", 3, 4.0), ("u1", "c", 2, 1.0),   # c is below the rating threshold
        ("u2", "a", 1, 4.0), ("u2", "b", 2, 5.0), ("u2", "d", 3, 5.0),
    ])
    seqs = prepare(log, min_value=4, min_user_events=2, min_item_events=2, max_history=2)
    assert [(s.user_id, s.items, s.lines) for s in seqs] == [
        ("u1", ["a", "b"], [1, 3]),
        ("u2", ["a", "b"], [5, 6]),   # d has one event -> dropped by the k-core
    ]
    # Without dedupe the duplicate keeps u1 at 3 events; truncation then keeps the latest 2.
    seqs = prepare(log, dedupe=False, min_value=4, max_history=2)
    assert [(s.user_id, s.lines) for s in seqs] == [("u1", [2, 3]), ("u2", [6, 7])]


def test_prepare_empty_result_is_an_error_naming_the_settings():
    log = make_log([("u1", "a", 1, 5.0), ("u2", "b", 2, 5.0)])
    with pytest.raises(DataError) as err:
        prepare(log, min_user_events=5)
    msg = str(err.value)
    assert err.value.path == SOURCE
    assert msg.startswith(f"{SOURCE}: no events left after preprocessing: ")
    for setting in ("dedupe=True", "min_value=None", "min_user_events=5", "min_item_events=0",
                    "max_history=None"):
        assert setting in msg


def test_dropped_duplicates_are_reported(caplog):
    import logging

    from behavior_lm.data.preprocess import prepare

    rows = [("u", "a", 1), ("u", "b", 2), ("u", "b", 2), ("u", "c", 3), ("u", "c", 3), ("u", "c", 3)]
    log = EventLog.from_pandas(pd.DataFrame({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "behavior": ["interact"] * 6,
        "timestamp": [r[2] for r in rows], "value": [float("nan")] * 6, "line": list(range(2, 8))}), source="log.csv")
    report: dict = {}
    with caplog.at_level(logging.WARNING):
        seqs = prepare(log, report=report)
    assert seqs[0].items == ["a", "b", "c"]
    assert report == {"duplicates_dropped": 3, "duplicate_lines": [4, 6, 7]}
    assert "dropped 3 exact duplicate event(s)" in caplog.text and "lines 4, 6, 7" in caplog.text


def _random_log(seed: int, n: int = 400) -> EventLog:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    users = rng.choice(["b", "a", "c10", "c9", "é", "[PAD]", "z"], size=n)
    items = rng.choice([str(i) for i in range(25)], size=n)
    behaviors = rng.choice(["pv", "buy"], size=n)
    ts = rng.integers(0, 12, size=n)                       # many ties: file order decides
    values = rng.choice([1.0, 3.0, 5.0], size=n)
    dup = rng.random(n) < 0.1                               # exact copies of earlier rows
    src = rng.integers(0, np.arange(n) + 1)
    for col in (users, items, behaviors, ts, values):
        col[dup] = col[src[dup]]
    table = pa.table({"user_id": users, "item_id": items, "behavior": behaviors,
                      "timestamp": pa.array(ts, pa.int64()), "value": pa.array(values, pa.float64()),
                      "line": pa.array(rng.permutation(n) + 2, pa.int64())})
    return EventLog(table, source="random.csv")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("settings", [
    dict(), dict(min_value=3.0), dict(min_user_events=5, min_item_events=4),
    dict(max_history=7, min_user_events=3), dict(dedupe=False, min_item_events=6, max_history=3)])
def test_clean_equals_the_step_by_step_chain(seed, settings):
    """``clean`` narrows one mask / index array and copies rows once; the result is exactly the
    documented chain of public steps run one after the other."""
    from behavior_lm.data.preprocess import clean, drop_duplicates, filter_by_value, k_core, sort_events, truncate_history

    log = _random_log(seed)
    chain = drop_duplicates(log) if settings.get("dedupe", True) else log
    chain = filter_by_value(chain, settings.get("min_value"))
    chain = k_core(chain, settings.get("min_user_events", 0), settings.get("min_item_events", 0))
    chain = truncate_history(sort_events(chain), settings.get("max_history"))
    assert clean(log, **settings).table.equals(chain.table)


def test_duplicate_hash_collisions_cost_time_not_answers(monkeypatch):
    """Rows are narrowed by a 64-bit hash before the exact comparison; with every hash equal
    (all rows candidates) the answer is the same."""
    from behavior_lm.data import preprocess

    log = _random_log(3)
    honest = preprocess.drop_duplicates(log)
    assert len(honest) < len(log)
    monkeypatch.setattr(preprocess, "_row_hashes", lambda table: np.zeros(table.num_rows, dtype=np.uint64))
    assert preprocess.drop_duplicates(log).table.equals(honest.table)
