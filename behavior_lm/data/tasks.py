"""The rows of the tasks beyond next-item ranking, with labels taken from the log itself.

Each task is a registered object in :mod:`behavior_lm.tasks`, which decides which of the builders
below makes its rows and with which settings; this module only cuts and labels sequences.

=================  ===========================================  ==========================
task               one example                                  label
=================  ===========================================  ==========================
``next-item``      history -> the next item (ranking)           the item token
``next-class``     (history, next item) -> what happens to it   behavior index; on one-
                                                                behavior logs liked
                                                                (value >= like_threshold)
``next-rating``    (history, next item) -> its value            the rating (regression)
``event-class``    a stream -> a class per event (token labels) as ``next-class``
``purchase-        history -> will a buy follow within the      1 if a ``buy`` is among the
intent``           next ``intent_horizon`` events (and          next N events, else 0
                   ``intent_seconds`` of the last event)
``conversion-      history -> for each browse of an item not    1 if that item is carted or
tag``              yet carted/bought in the history: will it    bought among the next N
                   convert (token labels)                       events, else 0
=================  ===========================================  ==========================

The item asked about is given as the second segment (``[CLS] history [SEP] item [SEP]``): "will
this user like / buy *this* item" is the question a product asks; without the item the label of
an unknown next event is mostly noise. Validation and test examples are exactly the ranking
split's targets, so every task is scored on the same held-out events; training examples are
drawn from the training events only (``examples_per_user`` positions per user, seeded).

``purchase-intent`` has its own per-user cut (see :func:`build_intent_task`): the label of a
history is about the events *after* it, so the test window is the user's last N events, the
validation window the N before, and training cuts stop N events before validation.
``conversion-tag`` uses the same cuts (:func:`build_conversion_task`).
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from behavior_lm.data.collators import IGNORE_INDEX
from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.splits import Example, Split, audit_windows
from behavior_lm.errors import DataError
from behavior_lm.data.streams import StreamFormat, encode_texts
from behavior_lm.tokenization.behavior_tokenizer import encode_tokens, is_item_token, item_token

def event_class_names(behaviors: Sequence[str], like_threshold: float) -> list[str]:
    """Classes of an event: its behavior on multi-behavior logs, liked or not (value >=
    ``like_threshold``) on one-behavior logs (what :class:`EventLabeler` assigns)."""
    if len(behaviors) > 1:
        return list(behaviors)
    return [f"value<{like_threshold:g}", f"value>={like_threshold:g}"]


class EventLabeler:
    """Maps an event (behavior, value, line) to its class (:func:`event_class_names`), or with
    ``regression`` to its value (the rating)."""

    def __init__(self, behaviors: Sequence[str], like_threshold: float, source: str,
                 regression: bool = False) -> None:
        self.behaviors = list(behaviors)
        self.like_threshold = like_threshold
        self.source = source
        self.regression = regression

    def _value(self, value: float | None, line: int) -> float:
        if value is None or value != value:  # None or NaN
            raise DataError("this task needs a value (rating) on every event", path=self.source,
                            line=line, field="value")
        return float(value)

    def label(self, behavior: str, value: float | None, line: int) -> int | float:
        if self.regression:
            return self._value(value, line)
        if len(self.behaviors) > 1:
            return self.behaviors.index(behavior)
        return int(self._value(value, line) >= self.like_threshold)


def _training_targets(seq: UserSequence, n: int, seed: int) -> list[int]:
    """Up to ``n`` target positions (>= 1, so there is a history) of a training sequence."""
    positions = list(range(1, len(seq)))
    rng = random.Random(f"{seed}:{seq.user_id}")
    return sorted(rng.sample(positions, min(n, len(positions))))


def _pair_rows(pairs: list[tuple[str, UserSequence, str, str, int | float]], tokenizer,
               max_length: int, fmt: StreamFormat) -> dict[str, list]:
    ids = [encode_tokens(tokenizer, fmt.serialize(h).split(), [item_token(item)], max_length=max_length)
           for _, h, item, _, _ in pairs]
    return {"user_id": [u for u, *_ in pairs], "input_ids": ids, "labels": [p[4] for p in pairs]}


def build_sequence_task(split: Split, tokenizer: PreTrainedTokenizerBase, labeler: EventLabeler, *,
                        max_length: int, fmt: StreamFormat, examples_per_user: int,
                        seed: int = 0) -> DatasetDict:
    """``next-class`` / ``next-rating`` datasets: (history, item) pairs with the labeler's label each."""
    train = []
    for seq in split.train:
        for i in _training_targets(seq, examples_per_user, seed):
            train.append((seq.user_id, seq.slice(0, i), seq.items[i], seq.behaviors[i],
                          labeler.label(seq.behaviors[i], seq.values[i], seq.lines[i])))
    parts = {"train": Dataset.from_dict(_pair_rows(train, tokenizer, max_length, fmt))}
    for name in ("validation", "test"):
        examples: list[Example] = getattr(split, name)
        rows = [(ex.user_id, ex.history, ex.target_item, ex.target_behavior,
                 labeler.label(ex.target_behavior, ex.target_value, ex.target_line))
                for ex in examples]
        if rows:
            parts[name] = Dataset.from_dict(_pair_rows(rows, tokenizer, max_length, fmt))
    return DatasetDict(parts)


def _token_row(seq: UserSequence, labels: list[int], tokenizer, vocab: dict[str, int], max_length: int,
               fmt: StreamFormat) -> tuple[list[int], list[int]]:
    """``[CLS] (<b>) i:x ... [SEP]`` ids and a label on each item token (-100 elsewhere),
    keeping the most recent events that fit."""
    unk = tokenizer.unk_token_id
    keep = max(1, (max_length - 2) // fmt.max_tokens_per_event)
    ids, lab = [tokenizer.cls_token_id], [IGNORE_INDEX]
    start = max(0, len(seq) - keep)
    for i in range(start, len(seq)):
        tokens = fmt.event_tokens(seq, i) if i > start else fmt.event_tokens(seq.slice(i, i + 1), 0)
        ids.extend(vocab.get(t, unk) for t in tokens)
        row = [IGNORE_INDEX] * len(tokens)
        row[next(k for k, t in enumerate(tokens) if is_item_token(t))] = labels[i]  # the label sits on the item
        lab.extend(row)
    ids.append(tokenizer.sep_token_id)
    lab.append(IGNORE_INDEX)
    return ids, lab


def build_token_task(split: Split, tokenizer: PreTrainedTokenizerBase, labeler: EventLabeler, *,
                     max_length: int, fmt: StreamFormat) -> DatasetDict:
    """``event-class``: training streams labelled on every item token; validation/test streams are
    the history plus the held-out event, labelled on the held-out event only (history labels of
    those users were never shown, and nothing later than the target is in the input)."""
    vocab = tokenizer.get_vocab()

    def rows_for(seqs: list[tuple[str, UserSequence, list[int]]]) -> dict[str, list]:
        out = {"user_id": [], "input_ids": [], "labels": []}
        for user, seq, labels in seqs:
            ids, lab = _token_row(seq, labels, tokenizer, vocab, max_length, fmt)
            out["user_id"].append(user)
            out["input_ids"].append(ids)
            out["labels"].append(lab)
        return out

    train = [(s.user_id, s, [labeler.label(b, v, ln)
                             for b, v, ln in zip(s.behaviors, s.values, s.lines)]) for s in split.train]
    parts = {"train": Dataset.from_dict(rows_for(train))}
    for name in ("validation", "test"):
        rows = []
        for ex in getattr(split, name):
            h = ex.history
            full = UserSequence(ex.user_id, h.items + [ex.target_item], h.behaviors + [ex.target_behavior],
                                h.timestamps + [ex.target_timestamp], h.values + [ex.target_value],
                                h.lines + [ex.target_line])
            labels = [IGNORE_INDEX] * len(h) + [labeler.label(ex.target_behavior, ex.target_value,
                                                              ex.target_line)]
            rows.append((ex.user_id, full, labels))
        if rows:
            parts[name] = Dataset.from_dict(rows_for(rows))
    return DatasetDict(parts)


def intent_label(seq: UserSequence, cut: int, behavior: str, horizon: int, seconds: int | None) -> int:
    """1 if an event of ``behavior`` is among events ``cut .. cut + horizon - 1`` (and, with
    ``seconds``, at most that long after the last history event ``cut - 1``)."""
    t0 = seq.timestamps[cut - 1]
    for j in range(cut, min(cut + horizon, len(seq))):
        if seconds is not None and seq.timestamps[j] - t0 > seconds:
            break
        if seq.behaviors[j] == behavior:
            return 1
    return 0


def intent_cuts(n: int, horizon: int) -> tuple[int | None, int | None, int]:
    """``(test cut, validation cut, last training cut + 1)`` for a user with ``n`` events.

    The test window is the last ``horizon`` events, validation the ``horizon`` before; a training
    cut ``c`` needs its whole window ``c .. c + horizon - 1`` before the validation cut, so no
    label of training ever looks at a validation or test event. ``None`` when too short.
    """
    test = n - horizon if n - horizon >= 1 else None
    valid = test - horizon if test is not None and test - horizon >= 1 else None
    train_end = (valid - horizon + 1) if valid is not None else 1
    return test, valid, max(train_end, 1)


def window_cuts(seq: UserSequence, horizon: int, examples_per_user: int, seed: int,
                source: str = "<memory>") -> list[tuple[str, int]]:
    """``(part, cut)`` pairs of one user for the windowed tasks: the test cut, the validation cut
    (:func:`intent_cuts`) and up to ``examples_per_user`` seeded training cuts before them,
    audited for leakage (:func:`~behavior_lm.data.splits.audit_windows`) before they are used."""
    test, valid, train_end = intent_cuts(len(seq), horizon)
    out = [("test", test)] if test is not None else []
    if valid is not None:
        out.append(("validation", valid))
    positions = list(range(1, train_end))
    rng = random.Random(f"{seed}:{seq.user_id}")
    out += [("train", c) for c in sorted(rng.sample(positions, min(examples_per_user, len(positions))))]
    audit_windows(seq, out, horizon, source)
    return out


def build_intent_task(sequences: list[UserSequence], tokenizer: PreTrainedTokenizerBase, *,
                      fmt: StreamFormat, max_length: int, behavior: str = "buy", horizon: int = 10,
                      seconds: int | None = None, examples_per_user: int = 8, seed: int = 0,
                      source: str = "<memory>") -> tuple[DatasetDict, dict]:
    """``purchase-intent`` rows ``[CLS] history [SEP]`` with 0/1 labels, and a split summary."""
    if not any(behavior in s.behaviors for s in sequences):
        raise DataError(f"purchase-intent: behavior {behavior!r} does not occur in the log",
                        path=source, field="behavior")
    rows: dict[str, list[tuple[str, UserSequence, int]]] = {"train": [], "validation": [], "test": []}
    for seq in sequences:
        for part, c in window_cuts(seq, horizon, examples_per_user, seed, source):
            rows[part].append((seq.user_id, seq.slice(0, c), intent_label(seq, c, behavior, horizon, seconds)))
    parts = {}
    for name, items in rows.items():
        if not items:
            continue
        ids = encode_texts(tokenizer, [fmt.serialize(h) for _, h, _ in items], max_length)
        parts[name] = Dataset.from_dict({"user_id": [u for u, _, _ in items], "input_ids": ids,
                                         "labels": [y for _, _, y in items]})
    summary = {"kind": "purchase-intent", "horizon_events": horizon, "horizon_seconds": seconds,
               "behavior": behavior, **{f"{k}_examples": len(v) for k, v in rows.items()},
               **{f"{k}_positive": int(sum(y for *_, y in v)) for k, v in rows.items()}}
    return DatasetDict(parts), summary


def conversion_labels(seq: UserSequence, cut: int, *, browse: str, convert: Sequence[str], horizon: int,
                      seconds: int | None) -> list[int]:
    """Token labels of the history ``seq[:cut]`` for ``conversion-tag``.

    A ``browse`` event gets a label only while its item is still unconverted in the history (no
    ``convert`` event of it later in ``seq[:cut]``): otherwise the answer would be in the input.
    The label is 1 when the item is converted among events ``cut .. cut + horizon - 1`` (within
    ``seconds`` of the last history event, when given). Every other event is ``IGNORE_INDEX``.
    """
    t0 = seq.timestamps[cut - 1]
    future: set[str] = set()
    for j in range(cut, min(cut + horizon, len(seq))):
        if seconds is not None and seq.timestamps[j] - t0 > seconds:
            break
        if seq.behaviors[j] in convert:
            future.add(seq.items[j])
    labels = [IGNORE_INDEX] * cut
    converted_later: set[str] = set()                  # converted after position i, inside the history
    for i in range(cut - 1, -1, -1):
        item = seq.items[i]
        if seq.behaviors[i] == browse and item not in converted_later:
            labels[i] = int(item in future)
        if seq.behaviors[i] in convert:
            converted_later.add(item)
    return labels


def build_conversion_task(sequences: list[UserSequence], tokenizer: PreTrainedTokenizerBase, *,
                          fmt: StreamFormat, max_length: int, browse: str = "pv",
                          convert: Sequence[str] = ("cart", "buy"), horizon: int = 10,
                          seconds: int | None = None, examples_per_user: int = 8, seed: int = 0,
                          source: str = "<memory>") -> tuple[DatasetDict, dict]:
    """``conversion-tag`` rows ``[CLS] history [SEP]`` with a 0/1 label on every still-open browse.

    Cuts as :func:`intent_cuts`: test labels look at the user's last ``horizon`` events,
    validation at the ``horizon`` before, and no training label looks at either. Only the browses
    that fit in ``max_length`` (the most recent ones) are in the input, so only they are labelled.
    """
    present = {b for s in sequences for b in s.behaviors}
    missing = [b for b in (browse, *convert) if b not in present]
    if missing:
        raise DataError(f"conversion-tag: behavior(s) {missing} do not occur in the log "
                        f"(it has {sorted(present)}); set browse_behavior / conversion_behaviors",
                        path=source, field="behavior")
    vocab = tokenizer.get_vocab()
    rows: dict[str, dict[str, list]] = {k: {"user_id": [], "input_ids": [], "labels": []}
                                        for k in ("train", "validation", "test")}
    counts = {k: [0, 0] for k in rows}                     # tagged tokens, positives

    def add(part: str, seq: UserSequence, cut: int) -> None:
        labels = conversion_labels(seq, cut, browse=browse, convert=convert, horizon=horizon,
                                   seconds=seconds)
        ids, lab = _token_row(seq.slice(0, cut), labels, tokenizer, vocab, max_length, fmt)
        tagged = [y for y in lab if y != IGNORE_INDEX]
        if not tagged:
            return
        rows[part]["user_id"].append(seq.user_id)
        rows[part]["input_ids"].append(ids)
        rows[part]["labels"].append(lab)
        counts[part][0] += len(tagged)
        counts[part][1] += sum(tagged)

    for seq in sequences:
        for part, c in window_cuts(seq, horizon, examples_per_user, seed, source):
            add(part, seq, c)
    parts = {k: Dataset.from_dict(v) for k, v in rows.items() if v["input_ids"]}
    summary = {"kind": "conversion-tag", "browse": browse, "convert": list(convert),
               "horizon_events": horizon, "horizon_seconds": seconds,
               **{f"{k}_examples": len(v["input_ids"]) for k, v in rows.items()},
               **{f"{k}_tagged_tokens": c[0] for k, c in counts.items()},
               **{f"{k}_positive": c[1] for k, c in counts.items()}}
    return DatasetDict(parts), summary
