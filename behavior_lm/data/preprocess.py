"""Preprocessing: EventLog -> EventLog steps, then per-user time-ordered sequences.

Every step is a small public function that takes and returns an :class:`EventLog`, vectorised
with pyarrow / numpy so a MovieLens-1M sized log (1M rows) takes well under a second per step.
:func:`prepare` chains them in the one order the rest of the toolkit assumes::

    drop_duplicates -> filter_by_value -> k_core -> sort_events -> truncate_history -> to_sequences

The event order used everywhere (see :func:`sort_events`) is: by ``user_id`` (plain string
order), then ``timestamp``, then ``line`` (file order). Sorting on ``line`` last makes ties on the
timestamp keep the order in which the events appear in the file, so the result is deterministic.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from behavior_lm.data.events import EventLog
from behavior_lm.errors import DataError, RecipeError

logger = logging.getLogger(__name__)

__all__ = [
    "UserSequence",
    "sort_events",
    "drop_duplicates",
    "filter_by_value",
    "k_core",
    "truncate_history",
    "to_sequences",
    "prepare",
    "clean",
]

EVENT_KEY: tuple[str, ...] = ("user_id", "item_id", "behavior", "timestamp", "value")
"""Columns that make two events the same event (everything but the source ``line``)."""


@dataclass(frozen=True)
class UserSequence:
    """One user's events in time order; the lists are parallel (same length)."""

    user_id: str
    items: list[str]
    behaviors: list[str]
    timestamps: list[int]
    values: list[float | None]
    lines: list[int]  # source line of each event (for error messages)

    def __post_init__(self) -> None:
        n = len(self.items)
        if not (len(self.behaviors) == len(self.timestamps) == len(self.values)
                == len(self.lines) == n):
            raise ValueError(
                f"UserSequence for user '{self.user_id}' has lists of different lengths: "
                f"items={n}, behaviors={len(self.behaviors)}, timestamps={len(self.timestamps)}, "
                f"values={len(self.values)}, lines={len(self.lines)}")

    def __len__(self) -> int:
        return len(self.items)

    def pick(self, indices: list[int]) -> "UserSequence":
        """Events at ``indices`` (in the given order) as a new sequence of the same user."""
        return UserSequence(
            user_id=self.user_id,
            items=[self.items[i] for i in indices],
            behaviors=[self.behaviors[i] for i in indices],
            timestamps=[self.timestamps[i] for i in indices],
            values=[self.values[i] for i in indices],
            lines=[self.lines[i] for i in indices],
        )

    def slice(self, start: int | None, stop: int | None) -> "UserSequence":
        """Events ``[start:stop]`` (Python slice semantics) as a new sequence of the same user."""
        s = slice(start, stop)
        return UserSequence(
            user_id=self.user_id,
            items=self.items[s],
            behaviors=self.behaviors[s],
            timestamps=self.timestamps[s],
            values=self.values[s],
            lines=self.lines[s],
        )


# --------------------------------------------------------------------------- helpers
def _codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Dense int codes (order of first appearance) for a column, as a numpy array.

    Nulls get a code of their own (all nulls share it), so they compare equal to each other.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _filter(log: EventLog, keep: np.ndarray) -> EventLog:
    if keep.all():
        return log
    return log.with_table(log.table.filter(pa.array(keep, type=pa.bool_())))


def _group_starts(codes: np.ndarray) -> np.ndarray:
    """Start index of each run of equal codes in an array where groups are contiguous."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    return np.concatenate(([0], change)).astype(np.int64)


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise RecipeError(f"{name} must be an integer >= 0, got {value!r}")


# --------------------------------------------------------------------------- steps
def sort_events(log: EventLog) -> EventLog:
    """Stable sort by (``user_id``, ``timestamp``, ``line``).

    Users come in plain string order of ``user_id`` (not order of first appearance); within a
    user events are in time order, and events with the same timestamp keep file order (``line``).
    The underlying Arrow sort is stable as well, so rows equal on all three keys keep their
    current relative order.
    """
    if len(log) <= 1:
        return log
    order = _sort_order(log.table, np.arange(len(log)))
    if (np.diff(order) == 1).all():
        return log                                    # already in order (sequence files usually are)
    return log.with_table(log.table.take(pa.array(order)))


def drop_duplicates(log: EventLog) -> EventLog:
    """Remove exact-duplicate events (same user, item, behavior, timestamp and value).

    The first occurrence in the current table order is kept (for a freshly read log: the one
    with the lowest line). Two null values count as equal. Row order is otherwise unchanged.

    Duplicates are rare, so rows are first narrowed down by a 64-bit hash of the five fields
    (one ``uint64`` a row, where exact keys over a 10M-event log took 1.5 GB of hash tables);
    only rows whose hash repeats are compared exactly, so a hash collision costs time, never a
    wrong answer.
    """
    if len(log) <= 1:
        return log
    return _filter(log, ~_duplicates(log.table))


def _duplicates(table: pa.Table) -> np.ndarray:
    """Whether each row repeats an earlier row's :data:`EVENT_KEY` values (see :func:`drop_duplicates`)."""
    out = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows <= 1:
        return out
    hashes = _row_hashes(table)
    values, counts = np.unique(hashes, return_counts=True)
    repeated = values[counts > 1]
    del values, counts
    if len(repeated) == 0:
        return out
    candidates = np.flatnonzero(np.isin(hashes, repeated))
    del hashes
    out[candidates[~_first_occurrences(table.take(pa.array(candidates)))]] = True
    return out


def _row_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash of each row's :data:`EVENT_KEY` fields (nulls hash alike)."""
    out = np.zeros(table.num_rows, dtype=np.uint64)
    for col in EVENT_KEY:
        column = table.column(col).combine_chunks()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            encoded = pc.dictionary_encode(column, null_encoding="encode")
            words = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
            part = pd.util.hash_array(words, categorize=False)[
                encoded.indices.to_numpy(zero_copy_only=False)]
        else:
            part = pd.util.hash_array(column.to_numpy(zero_copy_only=False), categorize=False)
        out = pd.util.hash_array(out ^ part, categorize=False)
    return out


def _first_occurrences(table: pa.Table) -> np.ndarray:
    """Exact: whether each row is the first of its :data:`EVENT_KEY` values in table order."""
    # One int64 key per row: mixed-radix combination of per-column codes, re-densified (hash
    # factorize) only when the next column could overflow int64. Then keep first occurrences.
    key = np.zeros(table.num_rows, dtype=np.int64)
    key_card = 1
    for col in EVENT_KEY:
        codes = _codes(table.column(col))
        card = int(codes.max()) + 1
        if key_card * card >= 2**62:
            key, uniques = pd.factorize(key)
            key = key.astype(np.int64)
            key_card = len(uniques)
        key = key * card + codes
        key_card *= card
    return ~pd.Series(key).duplicated(keep="first").to_numpy()


def filter_by_value(log: EventLog, min_value: float | None) -> EventLog:
    """Keep events with ``value >= min_value`` (e.g. a rating threshold).

    ``min_value=None`` keeps everything. When a threshold is asked for, an event without a value
    (null or NaN) is a :class:`DataError` naming the file, the line of the first such event and
    the field ``value``: silently dropping or keeping them would change the data unnoticed.
    """
    if min_value is None:
        return log
    _check_min_value(min_value)
    return _filter(log, _value_mask(log, min_value, np.ones(len(log), dtype=bool)))


def _check_min_value(min_value: float) -> None:
    if isinstance(min_value, bool) or not isinstance(min_value, (int, float, np.number)) \
            or np.isnan(min_value):
        raise RecipeError(f"min_value must be a number, got {min_value!r}")


def _value_mask(log: EventLog, min_value: float, keep: np.ndarray) -> np.ndarray:
    """:func:`filter_by_value` over the rows where ``keep`` holds: the rows that stay."""
    values = log.table.column("value")
    missing = pc.is_null(values, nan_is_null=True).to_numpy(zero_copy_only=False) & keep
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        line = log.table.column("line")[first].as_py()
        raise DataError(
            f"event has no value but min_value={min_value} was asked for "
            f"({int(missing.sum())} event(s) without a value); map a value column or drop the "
            f"value threshold",
            path=log.source, line=line, field="value")
    above = pc.greater_equal(values, pa.scalar(float(min_value))).to_numpy(zero_copy_only=False)
    return keep & np.asarray(above, dtype=bool)


def k_core(log: EventLog, min_user_events: int = 0, min_item_events: int = 0) -> EventLog:
    """Iteratively drop users with fewer than ``min_user_events`` events and items with fewer
    than ``min_item_events`` events, until both hold for every remaining user and item.

    One pass is not enough in general: dropping a rare item can push a user below its threshold,
    and dropping that user can push another item below its own. A threshold of 0 or 1 disables
    that side. Row order is unchanged.
    """
    _check_count("min_user_events", min_user_events)
    _check_count("min_item_events", min_item_events)
    if (min_user_events <= 1 and min_item_events <= 1) or len(log) == 0:
        return log
    return _filter(log, _k_core_mask(log.table, np.ones(len(log), dtype=bool), min_user_events, min_item_events))


def _k_core_mask(table: pa.Table, keep: np.ndarray, min_user_events: int, min_item_events: int) -> np.ndarray:
    """:func:`k_core` over the rows where ``keep`` holds: the rows that stay."""
    if (min_user_events <= 1 and min_item_events <= 1) or not keep.any():
        return keep
    users = _codes(table.column("user_id"))
    items = _codes(table.column("item_id"))
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    while True:
        new = keep
        if min_user_events > 1:
            counts = np.bincount(users[new], minlength=n_users)
            new = new & (counts[users] >= min_user_events)
        if min_item_events > 1:
            counts = np.bincount(items[new], minlength=n_items)
            new = new & (counts[items] >= min_item_events)
        if new.sum() == keep.sum():
            break
        keep = new
    return keep


def truncate_history(log: EventLog, max_events: int | None) -> EventLog:
    """Keep each user's ``max_events`` most recent events (in :func:`sort_events` order).

    ``None`` keeps everything. The result is sorted as by :func:`sort_events`.
    """
    log = sort_events(log)
    if max_events is None or len(log) == 0:
        return log
    if isinstance(max_events, bool) or not isinstance(max_events, (int, np.integer)) \
            or max_events < 1:
        raise RecipeError(f"max_history must be an integer >= 1, got {max_events!r}")
    return _filter(log, _recent(_codes(log.table.column("user_id")), max_events))


def _sort_order(table: pa.Table, rows: np.ndarray) -> np.ndarray:
    """Positions into ``rows`` that put them in :func:`sort_events` order (stable): users by
    plain string order (a rank of the distinct ids, so the sort itself is over integers), then
    timestamp, then line."""
    encoded = pc.dictionary_encode(table.column("user_id").combine_chunks())
    rank = np.empty(len(encoded.dictionary), dtype=np.int32)
    rank[pc.sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(encoded.dictionary), dtype=np.int32)
    user = rank[encoded.indices.to_numpy(zero_copy_only=False)[rows]]
    del encoded, rank
    ts = table.column("timestamp").to_numpy()[rows]
    line = table.column("line").to_numpy()[rows]
    if len(rows) <= 1:
        return np.arange(len(rows))
    later = (user[1:] > user[:-1]) | ((user[1:] == user[:-1]) & (
        (ts[1:] > ts[:-1]) | ((ts[1:] == ts[:-1]) & (line[1:] >= line[:-1]))))
    if later.all():
        return np.arange(len(rows))
    keys = pa.table({"u": user, "t": ts, "l": line})
    return pc.sort_indices(keys, sort_keys=[("u", "ascending"), ("t", "ascending"), ("l", "ascending")]).to_numpy()


def _recent(users: np.ndarray, max_events: int) -> np.ndarray:
    """For events grouped by user (``users`` holds each event's user code, groups contiguous):
    whether each is among its user's ``max_events`` last."""
    starts = _group_starts(users)
    sizes = np.diff(np.append(starts, len(users)))
    group = np.repeat(np.arange(len(starts)), sizes)
    pos_from_end = (starts + sizes)[group] - np.arange(len(users))  # 1 for the last event
    return pos_from_end <= max_events


def to_sequences(log: EventLog) -> list[UserSequence]:
    """One :class:`UserSequence` per user, events in :func:`sort_events` order.

    Users come in the order of their first (lowest) line in the source file.
    """
    log = sort_events(log)
    if len(log) == 0:
        return []
    table = log.table
    users = _codes(table.column("user_id"))
    starts = _group_starts(users)
    ends = np.append(starts[1:], len(users))
    lines_np = table.column("line").to_numpy()
    first_line = np.minimum.reduceat(lines_np, starts)
    order = np.argsort(first_line, kind="stable")

    user_ids = table.column("user_id").to_pylist()
    items = table.column("item_id").to_pylist()
    behaviors = table.column("behavior").to_pylist()
    timestamps = table.column("timestamp").to_pylist()
    values = table.column("value").to_pylist()
    lines = lines_np.tolist()
    out: list[UserSequence] = []
    for g in order.tolist():
        s, e = int(starts[g]), int(ends[g])
        out.append(UserSequence(
            user_id=user_ids[s],
            items=items[s:e],
            behaviors=behaviors[s:e],
            timestamps=timestamps[s:e],
            values=values[s:e],
            lines=lines[s:e],
        ))
    return out


def prepare(log: EventLog, *, dedupe: bool = True, min_value: float | None = None,
            min_user_events: int = 0, min_item_events: int = 0,
            max_history: int | None = None, report: dict | None = None) -> list[UserSequence]:
    """Run the whole preprocessing chain and return per-user sequences: :func:`clean` (see there
    for the order, the errors and ``report``), then :func:`to_sequences`."""
    return to_sequences(clean(log, dedupe=dedupe, min_value=min_value, min_user_events=min_user_events,
                              min_item_events=min_item_events, max_history=max_history, report=report))


def clean(log: EventLog, *, dedupe: bool = True, min_value: float | None = None,
          min_user_events: int = 0, min_item_events: int = 0,
          max_history: int | None = None, report: dict | None = None) -> EventLog:
    """The preprocessing chain up to per-user sequences, as a table sorted by :func:`sort_events`
    (what the columnar row builder of :mod:`behavior_lm.data.columnar` reads without building one
    Python object per event).

    Order: :func:`drop_duplicates` (if ``dedupe``), :func:`filter_by_value`, :func:`k_core`,
    :func:`sort_events`, :func:`truncate_history`. Truncation runs after the k-core, so it can
    leave an item with fewer than ``min_item_events`` events; that is intended (the k-core
    decides *which* users and items are in, truncation only bounds the history length).

    Raises :class:`DataError` (path = ``log.source``) when nothing is left, naming the settings.
    ``report``, when given, receives what was dropped silently before (``duplicates_dropped`` and
    up to five of their source lines); the same goes to the log as a warning.
    """
    _check_count("min_user_events", min_user_events)
    _check_count("min_item_events", min_item_events)
    if max_history is not None and (isinstance(max_history, bool) or not isinstance(max_history, (int, np.integer))
                                    or max_history < 1):
        raise RecipeError(f"max_history must be an integer >= 1, got {max_history!r}")
    # Each step narrows a mask or an index array over the one table; rows are copied once, at
    # the end (a 10M-event log: one copy of the table instead of one per step).
    table, n_in = log.table, len(log)
    keep = np.ones(n_in, dtype=bool)
    if dedupe and n_in > 1:
        keep = ~_duplicates(table)
        if not keep.all():
            lines = table.column("line").to_numpy()[~keep][:5].tolist()
            n_dropped = int((~keep).sum())
            logger.warning("%s: dropped %d exact duplicate event(s) (same user, item, behavior, time and "
                           "value; e.g. lines %s); set dedupe: false to keep them",
                           log.source, n_dropped, ", ".join(map(str, lines)))
            if report is not None:
                report.update(duplicates_dropped=n_dropped, duplicate_lines=lines)
    if min_value is not None:
        _check_min_value(min_value)
        keep = _value_mask(log, min_value, keep)
    keep = _k_core_mask(table, keep, min_user_events, min_item_events)
    rows = np.flatnonzero(keep)
    del keep
    rows = rows[_sort_order(table, rows)]
    if max_history is not None and len(rows):
        rows = rows[_recent(_codes(pc.take(table.column("user_id"), pa.array(rows))), max_history)]
    if len(rows) == n_in and (np.diff(rows) == 1).all():
        pass                                          # nothing dropped, already in order
    else:
        log = log.with_table(table.take(pa.array(rows)))
    if len(log) == 0:
        raise DataError(
            f"no events left after preprocessing: {n_in} event(s) in, settings dedupe={dedupe}, "
            f"min_value={min_value}, min_user_events={min_user_events}, "
            f"min_item_events={min_item_events}, max_history={max_history}; "
            f"lower the thresholds",
            path=log.source)
    return log
