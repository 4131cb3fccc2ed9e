"""Leave-one-out and temporal splits: exact contents, error messages, and the leakage audit."""
from __future__ import annotations

import pandas as pd
import pytest

from behavior_lm.data.events import EventLog
from behavior_lm.data.preprocess import UserSequence, to_sequences
from behavior_lm.data.splits import (
    Example,
    LeakageError,
    Split,
    audit,
    leave_one_out,
    temporal_split,
)
from behavior_lm.errors import DataError, RecipeError

SOURCE = "events.csv"


def seq(user: str, items: str, timestamps: list[int], lines: list[int]) -> UserSequence:
    """items as a string of one-letter item ids: seq('u1', 'abc', ...)."""
    n = len(items)
    return UserSequence(user, list(items), ["pv"] * n, list(timestamps), [None] * n, list(lines))


def view(ex: Example) -> tuple:
    return ex.user_id, "".join(ex.history.items), ex.target_item, ex.target_timestamp, \
        ex.target_line


def train_view(split: Split) -> dict[str, str]:
    return {s.user_id: "".join(s.items) for s in split.train}


# --------------------------------------------------------------------------- leave-one-out
@pytest.fixture
def two_users() -> list[UserSequence]:
    return [
        seq("u1", "abcd", [10, 20, 20, 30], [1, 2, 5, 7]),
        seq("u2", "xyz", [5, 6, 7], [3, 4, 6]),
    ]


def test_leave_one_out_exact_contents(two_users):
    split = leave_one_out(two_users, source=SOURCE)
    assert split.kind == "leave_one_out" and split.source == SOURCE
    assert train_view(split) == {"u1": "ab", "u2": "x"}
    assert [s.lines for s in split.train] == [[1, 2], [3]]
    assert [view(e) for e in split.validation] == [("u1", "ab", "c", 20, 5), ("u2", "x", "y", 6, 4)]
    assert [view(e) for e in split.test] == [("u1", "abc", "d", 30, 7), ("u2", "xy", "z", 7, 6)]
    assert split.test[0].history.lines == [1, 2, 5]
    assert split.test[0].target_behavior == "pv" and split.test[0].target_value is None
    assert split.summary() == {
        "kind": "leave_one_out", "train_users": 2, "train_events": 3,
        "validation_examples": 2, "test_examples": 2,
        "validation_history_events": 3, "test_history_events": 5,
    }


def test_leave_one_out_without_validation(two_users):
    split = leave_one_out(two_users, source=SOURCE, validation=False)
    assert train_view(split) == {"u1": "abc", "u2": "xy"}
    assert split.validation == []
    assert [view(e) for e in split.test] == [("u1", "abc", "d", 30, 7), ("u2", "xy", "z", 7, 6)]


def test_leave_last_buy_out():
    """target_behavior: test = each user's last buy, validation = the buy before it (not as a
    first event), training = everything before the earliest target; users without buys train."""
    def mseq(user, items, behaviors):
        n = len(items)
        return UserSequence(user, list(items), behaviors, list(range(10, 10 + n)), [None] * n,
                            list(range(1, n + 1)))

    users = [mseq("u1", "abcdef", ["pv", "buy", "pv", "buy", "pv", "buy"]),   # 3 buys
             mseq("u2", "xyz", ["buy", "pv", "buy"]),                          # first-event buy skipped
             mseq("u3", "pq", ["pv", "cart"])]                                 # no buy
    split = leave_one_out(users, source=SOURCE, target_behavior="buy")
    assert [(e.user_id, "".join(e.history.items), e.target_item, e.target_behavior) for e in split.test] == \
        [("u1", "abcde", "f", "buy"), ("u2", "xy", "z", "buy")]
    assert [(e.user_id, "".join(e.history.items), e.target_item) for e in split.validation] == \
        [("u1", "abc", "d")]
    assert train_view(split) == {"u1": "abc", "u2": "xy", "u3": "pq"}
    with pytest.raises(DataError, match="target_behavior 'share' does not occur"):
        leave_one_out(users, source=SOURCE, target_behavior="share")


def test_leave_one_out_too_short_user_names_file_line_and_fix():
    df = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u2", "u1", "u2", "u3"],
                       "item_id": list("abcdefg"),
                       "timestamp": [1, 2, 3, 9, 4, 8, 1]})
    seqs = to_sequences(EventLog.from_pandas(df, SOURCE))
    with pytest.raises(DataError) as err:
        leave_one_out(seqs, source=SOURCE)
    e = err.value
    # u2: first event in the file is line 4 (its earliest event in time is line 6).
    assert (e.path, e.line, e.field) == (SOURCE, 4, "user_id")
    msg = str(e)
    assert msg.startswith(f"{SOURCE}:4: field 'user_id': user 'u2' has 2 event(s)")
    assert "at least 3" in msg and "min_user_events" in msg and "k-core" in msg
    assert "1 other user(s)" in msg   # u3
    # Without validation, two events are enough; u3 (one event) is still too short.
    with pytest.raises(DataError, match=r"events.csv:7: field 'user_id': user 'u3' has 1 event"):
        leave_one_out(seqs, source=SOURCE, validation=False)


def test_leave_one_out_rejects_unordered_sequence():
    with pytest.raises(DataError, match="not in time order"):
        leave_one_out([seq("u1", "abc", [1, 3, 2], [1, 2, 3])], source=SOURCE)


# --------------------------------------------------------------------------- temporal
@pytest.fixture
def timeline() -> list[UserSequence]:
    return [
        seq("u1", "abcde", [1, 3, 5, 6, 8], [1, 2, 3, 4, 5]),
        seq("u2", "fg", [5, 9], [6, 7]),          # nothing before valid_time
        seq("u3", "hij", [2, 4, 4], [8, 9, 10]),  # only training events
        seq("u4", "kl", [2, 9], [11, 12]),        # no event in the validation window
    ]


def test_temporal_split_with_explicit_times(timeline):
    split = temporal_split(timeline, source=SOURCE, valid_time=5, test_time=7)
    assert split.kind == "temporal" and (split.valid_time, split.test_time) == (5, 7)
    # Training: events with timestamp < 5; u2 has none and is left out.
    assert train_view(split) == {"u1": "ab", "u3": "hij", "u4": "k"}
    # Validation: first event in [5, 7) with a non-empty history. u2's event at 5 has no history.
    assert [view(e) for e in split.validation] == [("u1", "ab", "c", 5, 3)]
    # Test: first event >= 7; history includes validation-period events (u1's c, d; u2's f).
    assert [view(e) for e in split.test] == [("u1", "abcd", "e", 8, 5),
                                             ("u2", "f", "g", 9, 7),
                                             ("u4", "k", "l", 9, 12)]
    summary = split.summary()
    assert (summary["valid_time"], summary["test_time"], summary["train_events"]) == (5, 7, 6)
    assert (summary["validation_examples"], summary["test_examples"]) == (1, 3)


def test_temporal_split_with_fractions():
    # 10 events at distinct times 1..10.
    seqs = [seq("u1", "abcde", [1, 3, 5, 7, 9], [1, 3, 5, 7, 9]),
            seq("u2", "fghij", [2, 4, 6, 8, 10], [2, 4, 6, 8, 10])]
    split = temporal_split(seqs, source=SOURCE, valid_fraction=0.2, test_fraction=0.2)
    # 2 of 10 events >= test_time, 2 in [valid_time, test_time).
    assert (split.valid_time, split.test_time) == (7, 9)
    assert train_view(split) == {"u1": "abc", "u2": "fgh"}
    assert [view(e) for e in split.validation] == [("u1", "abc", "d", 7, 7),
                                                   ("u2", "fgh", "i", 8, 8)]
    assert [view(e) for e in split.test] == [("u1", "abcd", "e", 9, 9),
                                             ("u2", "fghi", "j", 10, 10)]
    # A given test_time with a fraction for valid_time: 2 events before the cut at 9.
    split = temporal_split(seqs, source=SOURCE, test_time=9, valid_fraction=0.2)
    assert (split.valid_time, split.test_time) == (7, 9)
    # valid_fraction=0: no validation window.
    split = temporal_split(seqs, source=SOURCE, valid_fraction=0, test_fraction=0.2)
    assert (split.valid_time, split.test_time) == (9, 9) and split.validation == []


def test_temporal_split_bad_settings(timeline):
    with pytest.raises(RecipeError, match="valid_time"):
        temporal_split(timeline, source=SOURCE, valid_time=8, test_time=6)
    with pytest.raises(RecipeError, match="test_fraction"):
        temporal_split(timeline, source=SOURCE, test_fraction=0)
    with pytest.raises(DataError, match="no training events"):
        temporal_split(timeline, source=SOURCE, valid_time=1, test_time=5)
    with pytest.raises(DataError, match="no test examples"):
        temporal_split(timeline, source=SOURCE, valid_time=5, test_time=100)


# --------------------------------------------------------------------------- audit
def example(s: UserSequence, history: UserSequence, index: int) -> Example:
    return Example(user_id=s.user_id, history=history, target_item=s.items[index],
                   target_behavior=s.behaviors[index], target_timestamp=s.timestamps[index],
                   target_value=s.values[index], target_line=s.lines[index])


def test_audit_passes_on_generated_splits(two_users, timeline):
    leave_one_out(two_users, source=SOURCE).audit()
    split = temporal_split(timeline, source=SOURCE, valid_time=5, test_time=7)
    audit(split)
    assert issubclass(LeakageError, DataError)


def test_audit_catches_target_in_its_own_history():
    s = seq("u7", "abc", [1, 2, 3], [11, 12, 13])
    bad = Split(kind="leave_one_out", train=[s.slice(0, 1)], validation=[],
                test=[example(s, s, 2)], source=SOURCE)   # history includes the target
    with pytest.raises(LeakageError) as err:
        bad.audit()
    assert (err.value.path, err.value.line) == (SOURCE, 13)
    assert "user 'u7'" in str(err.value) and "line 13" in str(err.value)
    assert "in its own history" in str(err.value)


def test_audit_catches_history_later_than_target():
    s = seq("u7", "abc", [1, 9, 3], [11, 12, 13])
    bad = Split(kind="leave_one_out", train=[s.slice(0, 1)], validation=[],
                test=[example(s, s.slice(0, 2), 2)], source=SOURCE)
    with pytest.raises(LeakageError) as err:
        audit(bad)
    msg = str(err.value)
    assert msg.startswith(f"{SOURCE}:12: field 'timestamp': user 'u7': history event at line 12")
    assert "target at line 13" in msg


def test_audit_catches_training_event_after_test_target():
    s = seq("u7", "abc", [1, 2, 3], [11, 12, 13])
    late = seq("u7", "ax", [1, 5], [11, 14])      # training saw an event after the target
    bad = Split(kind="leave_one_out", train=[late], validation=[],
                test=[example(s, s.slice(0, 2), 2)], source=SOURCE)
    with pytest.raises(LeakageError) as err:
        bad.audit()
    msg = str(err.value)
    assert err.value.line == 14
    assert "user 'u7'" in msg and "training event at line 14" in msg and "line 13" in msg
    # Training containing the target event itself (same line) is caught too.
    bad = Split(kind="leave_one_out", train=[s], validation=[],
                test=[example(s, s.slice(0, 2), 2)], source=SOURCE)
    with pytest.raises(LeakageError, match=r"events.csv:13: .*user 'u7'.*also a training event"):
        bad.audit()


def test_audit_temporal_cuts():
    s = seq("u7", "abcd", [1, 2, 5, 8], [11, 12, 13, 14])
    good = dict(kind="temporal", validation=[example(s, s.slice(0, 2), 2)],
                test=[example(s, s.slice(0, 3), 3)], source=SOURCE, valid_time=5, test_time=7)
    Split(train=[s.slice(0, 2)], **good).audit()
    with pytest.raises(LeakageError, match=r"events.csv:13: .*user 'u7'.*not before valid_time=5"):
        Split(train=[s.slice(0, 3)], **good).audit()
    with pytest.raises(LeakageError, match=r"user 'u7': test target at line 13"):
        Split(**{**good, "train": [s.slice(0, 2)], "test": [example(s, s.slice(0, 2), 2)]}).audit()


def test_sequence_file_events_share_a_line_but_are_distinct():
    """In `uid i1 i2 ...` files every event of a user is on one line; timestamps tell them apart."""
    s = seq("u1", "abcde", [0, 1, 2, 3, 4], [1, 1, 1, 1, 1])
    split = leave_one_out([s], source=SOURCE)          # audits itself: must not raise
    assert split.test[0].target_item == "e" and split.train[0].items == ["a", "b", "c"]
    bad = Split(kind="leave_one_out", train=[s.slice(0, 3)], validation=[],
                test=[example(s, s, 4)], source=SOURCE)
    with pytest.raises(LeakageError, match="in its own history"):
        bad.audit()


def test_windowed_tasks_are_audited_and_a_leaking_window_is_caught():
    """Purchase-intent / conversion windows go through the same audit before use: a training
    window whose label reads into the validation window, or a validation label reading into the
    test window, is a LeakageError naming the user and the line."""
    from behavior_lm.data.preprocess import UserSequence
    from behavior_lm.data.splits import LeakageError, audit_windows
    from behavior_lm.data.tasks import window_cuts

    n = 30
    s = UserSequence("u7", [str(i) for i in range(n)], ["pv"] * n, list(range(n)), [None] * n,
                     list(range(101, 101 + n)))
    cuts = window_cuts(s, horizon=5, examples_per_user=20, seed=0, source="log.csv")   # audited inside
    assert dict((p, c) for p, c in cuts if p != "train") == {"test": 25, "validation": 20}
    assert max(c for p, c in cuts if p == "train") + 5 <= 20
    with pytest.raises(LeakageError, match=r"log\.csv:118: .*'u7': the train window at event 17"):
        audit_windows(s, [("test", 25), ("validation", 20), ("train", 17)], 5, "log.csv")
    with pytest.raises(LeakageError, match="the validation window at event 22"):
        audit_windows(s, [("test", 25), ("validation", 22)], 5, "log.csv")
    with pytest.raises(LeakageError, match="leaves no history"):
        audit_windows(s, [("train", 0)], 5, "log.csv")
