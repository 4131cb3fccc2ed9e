"""Next-item rows straight from the cleaned event table, with numpy instead of Python objects.

:func:`behavior_lm.data.streams.build_dataset_dict` builds rows from one ``UserSequence`` per user
and one ``Example`` per target, serialises each window to text and looks each token up: about
17 µs and several hundred bytes of Python objects per event, which is what made a 10M-event log
take 13 minutes and 7 GB. This module builds *the same rows* (same tokenizer, same ids, same
order, same columns and types; ``tests/test_columnar.py`` compares them on real logs) from the
sorted table :func:`behavior_lm.data.preprocess.clean` returns, as integer arrays:

- users come in the order of their first line in the file, events in (time, line) order, as in
  :func:`~behavior_lm.data.preprocess.to_sequences`;
- the vocabulary orders items by frequency, ties by first appearance in that order, as
  :func:`~behavior_lm.tokenization.behavior_tokenizer.build_tokenizer`;
- leave-one-out: per user the last event is the test target, the one before it the validation
  target, the rest is training (:func:`~behavior_lm.data.splits.leave_one_out`);
- training windows of :func:`~behavior_lm.data.streams.window_events` events cut from the newest
  event backwards, ranking rows of the last :func:`~behavior_lm.data.streams.context_events`
  events of the history, each wrapped in the tokenizer's template; ``seen`` holds the sorted
  item ids of the whole history.

It covers the common case: the ``next-item`` rows (``TaskRows.stream_rows``), leave-one-out
without ``target_behavior`` or cold items, streams of items with or without behavior tokens.
Time-gap, session and side tokens, temporal splits and the other tasks take the general path.
The leakage audit holds by construction here (targets are each user's last events in time order,
histories end before them); :func:`audit` checks that per user, vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from behavior_lm.data.events import EventLog
from behavior_lm.data.preprocess import _codes, _group_starts
from behavior_lm.data.splits import LEAVE_ONE_OUT, LeakageError
from behavior_lm.data.streams import StreamFormat, context_events, window_events
from behavior_lm.errors import DataError
from behavior_lm.tokenization.behavior_tokenizer import (_template, behavior_token, grammar, item_token,
                                                         vocabulary_tokenizer)

if TYPE_CHECKING:      # heavy; the row builder runs without them in Ray workers (ray_engine)
    from datasets import DatasetDict
    from transformers import PreTrainedTokenizerBase

    from behavior_lm.arguments import DataArguments


def applies(args: DataArguments, stream_rows: bool) -> bool:
    """Whether :func:`build` makes this recipe's rows (else the general path does)."""
    return (stream_rows and args.split == LEAVE_ONE_OUT and not args.target_behavior and not args.cold_items
            and not args.time_gaps and args.session_gap is None and not args.item_side)


@dataclass
class Built:
    rows: DatasetDict
    tokenizer: PreTrainedTokenizerBase
    fmt: StreamFormat
    behaviors: list[str]
    split_summary: dict
    prepared: dict


@dataclass
class Events:
    """The cleaned log as compact per-event codes, users in output order (first line in the
    file), events in (time, line) order: all :func:`build` needs, so the event table can be
    freed before the rows are built (``Events.of(log); del log``)."""

    offsets: np.ndarray         # user k's events are [offsets[k], offsets[k + 1])
    user_ids: pa.Array          # one per user, output order
    items: np.ndarray           # int32 code per event into item_names
    item_names: pa.Array
    behaviors: np.ndarray       # int32 code per event into behavior_names
    behavior_names: list[str]   # in order of first appearance
    source: str
    first_lines: np.ndarray | None = None   # each user's lowest line (the output order's key)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def of(cls, log: EventLog) -> "Events":
        """Encode a sorted, cleaned log; refuse users too short for leave-one-out with
        validation (as :func:`behavior_lm.data.splits.leave_one_out` does) and check the time
        order every target relies on (:func:`audit`)."""
        table = log.table
        codes = _codes(table.column("user_id"))
        starts = _group_starts(codes)
        del codes
        sizes = np.diff(np.append(starts, table.num_rows))
        first_line = np.minimum.reduceat(table.column("line").to_numpy(), starts)
        groups = np.argsort(first_line, kind="stable")
        offsets = np.concatenate(([0], np.cumsum(sizes[groups]))).astype(np.int64)
        order = pa.array(ranges(starts[groups], sizes[groups]))
        user_ids = pc.take(table.column("user_id"), pa.array(starts[groups])).combine_chunks().cast(pa.string())

        def column(name: str) -> pa.Array:
            return pc.take(table.column(name), order).combine_chunks()

        _check_lengths(offsets, user_ids, column("line").to_numpy(), log.source)
        audit(offsets, user_ids, column("timestamp").to_numpy(), column("line").to_numpy(), log.source)
        items = pc.dictionary_encode(column("item_id"))
        behavior = column("behavior").cast(pa.string())
        names = pc.unique(behavior)                         # first appearance, output order
        b_codes = pc.index_in(behavior, names).to_numpy(zero_copy_only=False).astype(np.int32)
        return cls(offsets, user_ids, items.indices.to_numpy(zero_copy_only=False).astype(np.int32),
                   items.dictionary, b_codes, names.to_pylist(), log.source, first_line[groups])


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without the loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    heads = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - heads, lengths) + np.arange(total, dtype=np.int64)


def _check_lengths(offsets: np.ndarray, user_ids: pa.Array, lines: np.ndarray, source: str) -> None:
    sizes = np.diff(offsets)
    short = np.flatnonzero(sizes < 3)
    if len(short):
        k = int(short[0])
        own = lines[offsets[k]:offsets[k + 1]]
        others = f" ({len(short) - 1} other user(s) are too short as well)" if len(short) > 1 else ""
        raise DataError(
            f"user '{user_ids[k].as_py()}' has {int(sizes[k])} event(s); leave-one-out with "
            f"validation needs at least 3 per user{others}; raise min_user_events (k-core) to 3 or more "
            f"to drop such users", path=source, line=int(own.min()) if len(own) else None, field="user_id")


def audit(offsets: np.ndarray, user_ids: pa.Array, timestamps: np.ndarray, lines: np.ndarray,
          source: str) -> None:
    """The leave-one-out rule of :func:`behavior_lm.data.splits.audit` for all users at once: each
    user's events are in time order, so no history or training event is later than the targets
    (the validation target, then the test target, are the user's last events)."""
    ok = np.ones(len(timestamps), dtype=bool)
    ok[1:] = timestamps[1:] >= timestamps[:-1]
    ok[offsets[:-1]] = True                             # a user's first event has nothing before it
    if not ok.all():
        at = int(np.flatnonzero(~ok)[0])
        k = int(np.searchsorted(offsets, at, side="right") - 1)
        raise LeakageError(f"user '{user_ids[k].as_py()}': events are not in time order at line {int(lines[at])}",
                           path=source, line=int(lines[at]), field="timestamp")


def _tokenizer(events: Events, with_behaviors: bool, template: str,
               max_length: int) -> tuple[PreTrainedTokenizerBase, np.ndarray]:
    """The tokenizer :func:`build_tokenizer` would build over these events, and each event's
    item token id (int32)."""
    names = events.item_names
    counts = np.bincount(events.items, minlength=len(names))
    first = np.full(len(names), len(events.items), dtype=np.int64)
    order = np.argsort(events.items, kind="stable")
    sorted_codes = events.items[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    first[sorted_codes[starts]] = order[starts]         # stable sort: the first index of each code
    del order, sorted_codes
    tokenizer, token_of_code = vocabulary(names, counts, first, events.behavior_names if with_behaviors else [],
                                          template, max_length)
    return tokenizer, token_of_code[events.items]


def vocabulary(names: pa.Array, counts: np.ndarray, first: np.ndarray, behaviors: list[str], template: str,
               max_length: int) -> tuple[PreTrainedTokenizerBase, np.ndarray]:
    """The tokenizer over a catalogue given per item its name, event count and first position in
    output order (any increasing key): specials, ``behaviors``' tokens, then items most popular
    first, ties by first appearance, as :func:`build_tokenizer` orders them. Returns it and the
    token id of each item (int32, in the order of ``names``)."""
    bad = pc.or_(pc.equal(pc.utf8_length(names), 0), pc.match_substring_regex(names, r"\s"))
    if pc.any(bad).as_py():
        item = names.filter(bad)[0].as_py()
        raise DataError(f"item id {item!r} is empty or contains whitespace; item ids must be single tokens",
                        field="item_id")
    ranked = np.lexsort((first, -counts))               # most popular first, ties by first appearance
    specials = list(grammar()["special_tokens"].values())
    head = specials + [behavior_token(b) for b in behaviors]
    tokens = head + [item_token(i) for i in pc.take(names, pa.array(ranked)).to_pylist()]
    tokenizer = vocabulary_tokenizer(tokens, template=template, max_length=max_length)
    token_of_code = np.empty(len(names), dtype=np.int32)
    token_of_code[ranked] = len(head) + np.arange(len(names), dtype=np.int32)
    return tokenizer, token_of_code


def _rows(event_tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, prefix: list[int],
          suffix: list[int]) -> pa.ListArray:
    """One list per row: ``prefix + tokens of events [start, start + length) + suffix``;
    ``event_tokens`` is ``(events, tokens per event)``, int32: what ``datasets`` stores an
    ``input_ids`` column built from Python lists as."""
    per_event = event_tokens.shape[1]
    body = lengths * per_event
    row_len = body + len(prefix) + len(suffix)
    offsets = np.concatenate(([0], np.cumsum(row_len))).astype(np.int64)
    values = np.empty(int(offsets[-1]), dtype=np.int32)
    for j, tok in enumerate(prefix):
        values[offsets[:-1] + j] = tok
    for j, tok in enumerate(suffix):
        values[offsets[1:] - len(suffix) + j] = tok
    values[ranges(offsets[:-1] + len(prefix), body)] = event_tokens[ranges(starts, lengths)].reshape(-1)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)).cast(pa.list_(pa.int32()))


def _seen(item_tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, vocab_size: int) -> pa.ListArray:
    """Per row, the sorted distinct item token ids of events ``[start, start + length)``."""
    rows = np.repeat(np.arange(len(starts), dtype=np.int64), lengths)
    keys = rows * vocab_size + item_tokens[ranges(starts, lengths)]
    del rows
    keys.sort()                                         # a sort, not np.unique's hash table (18 s at 10M)
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
    counts = np.bincount(keys // vocab_size, minlength=len(starts))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(keys % vocab_size)).cast(pa.list_(pa.int64()))


def build(events: Events, args: DataArguments, template: str) -> Built:
    """Rows, tokenizer and counts for a cleaned log's :class:`Events` (see the module docstring):
    what ``build_dataset_dict(leave_one_out(to_sequences(log)), build_tokenizer(...))`` returns,
    built without per-event Python objects."""
    behaviors = events.behavior_names
    with_behaviors = args.use_behaviors if args.use_behaviors is not None else len(behaviors) > 1
    fmt = StreamFormat(behaviors=with_behaviors)
    tokenizer, item_tokens = _tokenizer(events, fmt.behaviors, template, args.max_length)
    layout = RowLayout.of(tokenizer, behaviors, fmt, args)
    tables, summary = split_tables(events, item_tokens, events.behaviors, behaviors, layout, fmt)
    prepared = {"events": int(events.sizes.sum()), "users": len(events.sizes), "items": len(events.item_names),
                "behaviors": behaviors}
    from datasets import Dataset, DatasetDict

    rows = DatasetDict({name: Dataset(table) for name, table in tables.items()})
    return Built(rows, tokenizer, fmt, behaviors, summary, prepared)


@dataclass(frozen=True)
class RowLayout:
    """What the row builder reads of the tokenizer and the recipe, as plain values: a Ray worker
    gets it without importing transformers."""

    prefix: list[int]                   # the template's tokens before the events ([BOS])
    suffix: list[int]                   # and after them
    behavior_ids: list[int]             # token id of each behavior (``behaviors`` order); [] without them
    vocab_size: int
    max_length: int
    train_windows: str

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, behaviors: list[str], fmt: StreamFormat,
           args: DataArguments) -> "RowLayout":
        vocab = tokenizer.get_vocab()
        parts = _template(tokenizer)["single"]
        at = [kind for kind, _ in parts].index("sequence")
        return cls([vocab[name] for _, name in parts[:at]], [vocab[name] for _, name in parts[at + 1:]],
                   [vocab[behavior_token(b)] for b in behaviors] if fmt.behaviors else [], len(vocab),
                   args.max_length, args.train_windows)


def split_tables(events: Events, item_tokens: np.ndarray, behavior_codes: np.ndarray, behaviors: list[str],
                 layout: RowLayout, fmt: StreamFormat) -> tuple[dict[str, pa.Table], dict]:
    """The train/validation/test rows of ``events`` as Arrow tables, and the split counts.

    ``item_tokens`` is each event's item token id, ``behavior_codes`` each event's index into
    ``behaviors`` (the catalogue-wide names in order of first appearance). Users are independent
    here, so a part of the users (one partition of :mod:`behavior_lm.data.ray_engine`) gives
    exactly its users' rows of the whole log."""
    if fmt.behaviors:
        b_tokens = np.array(layout.behavior_ids, dtype=np.int32)[behavior_codes]
        event_tokens = np.stack([b_tokens, item_tokens], axis=1)
        del b_tokens
    else:
        event_tokens = item_tokens[:, None]
    prefix, suffix = layout.prefix, layout.suffix

    heads, sizes = events.offsets[:-1], events.sizes
    span = window_events(layout.max_length, fmt)
    train_len = sizes - 2
    n_windows = np.ones_like(train_len) if layout.train_windows == "last" else -(-train_len // span)
    user_of_window = np.repeat(np.arange(len(sizes)), n_windows)
    back = ranges(np.zeros(len(sizes), dtype=np.int64), n_windows)          # 0, 1, ... per user
    ends = train_len[user_of_window] - (n_windows[user_of_window] - 1 - back) * span   # chronological
    starts = np.maximum(0, ends - span)
    train = pa.table({
        "user_id": pc.take(events.user_ids, pa.array(user_of_window)),
        "input_ids": _rows(event_tokens, heads[user_of_window] + starts, ends - starts, prefix, suffix)})
    del user_of_window, back, ends, starts

    context = context_events(layout.max_length, fmt)
    behavior_names = pa.array(behaviors, pa.string())
    out = {"train": train}
    for name, hist in (("validation", sizes - 2), ("test", sizes - 1)):
        target_at = heads + hist
        cut = np.maximum(0, hist - context)
        out[name] = pa.table({
            "user_id": events.user_ids,
            "input_ids": _rows(event_tokens, heads + cut, hist - cut, prefix, suffix),
            "target": pa.array(item_tokens[target_at].astype(np.int64)),
            "target_behavior": pc.take(behavior_names, pa.array(behavior_codes[target_at])),
            "target_behavior_id": pa.array(event_tokens[target_at, 0].astype(np.int64) if fmt.behaviors
                                           else np.full(len(hist), -1, dtype=np.int64)),
            "seen": _seen(item_tokens, heads, hist, layout.vocab_size),
        })
    summary = {"kind": LEAVE_ONE_OUT, "train_users": len(sizes), "train_events": int(train_len.sum()),
               "validation_examples": len(sizes), "test_examples": len(sizes),
               "validation_history_events": int((sizes - 2).sum()), "test_history_events": int((sizes - 1).sum())}
    return out, summary
