"""Split -> token streams -> ``datasets.DatasetDict``.

``train`` rows are windows of a user's training events (``input_ids`` only; the collator makes
the labels). ``validation``/``test`` rows are one prediction each: the history as ``input_ids``
(its most recent :func:`context_events` events), the ``target`` item token id and the ``seen`` item
token ids of the whole history (for seen-item filtering).

The layout contract between training and scoring (and ``predict``, ``pipeline()``): a training
window is ``[BOS]`` + :func:`window_events` whole events; a history that is scored or served is
``[BOS]`` + at most ``window_events - 1`` whole events, never cut inside an event. Scoring reads the
position after the history, after an appended ``<b>`` and/or ``[MASK]`` at most one event further,
so every position it reads (and, with two tokens per event, its parity) is one that training used
as a target position: a causal window's last token has no next-token label, and a masked window's
item slots end at its last event.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.splits import Example, Split
from behavior_lm.tokenization.behavior_tokenizer import (behavior_token, encode_tokens, gap_token, gap_tokens,
                                                         grammar, item_token, side_token)

if TYPE_CHECKING:      # datasets and transformers load only where rows are built (Ray workers skip them)
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

TRAIN_WINDOWS = ("all", "last")


@dataclass(frozen=True)
class StreamFormat:
    """How one event becomes tokens: ``[SESSION] [gap:1h] <pv> i:42 category:7`` at most,
    ``i:42`` at least.

    - ``behaviors``: the behavior token before each item (multi-behavior logs);
    - ``time_gaps``: a log-spaced bucket token (``[gap:10m]``, ``[gap:1d]``, ...) before an event
      when the time since the user's previous event reaches the smallest bucket;
    - ``session_gap``: seconds of inactivity that start a new session (``[SESSION]`` token);
    - ``item_side``: the name of an item attribute (the Taobao ``category``) whose token follows
      each item, from ``side_values`` (item -> value); items without a value get none.

    The first event of a history has no gap (nothing before it is known), and no gap is ever
    written before a *target*: its time is not known when predicting it. The side token comes
    *after* the item, so predicting the next item never needs the target's attribute, while the
    history tells the model which categories the user moves through.
    """

    behaviors: bool = False
    time_gaps: bool = False
    session_gap: int | None = None
    item_side: str | None = None
    side_values: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    @property
    def max_tokens_per_event(self) -> int:
        return (1 + int(self.behaviors) + int(self.time_gaps) + int(self.session_gap is not None)
                + int(self.item_side is not None))

    def extra_tokens(self) -> list[str]:
        """Vocabulary besides items and behaviors (gap buckets, the session token, side tokens)."""
        side = ([side_token(self.item_side, v) for v in sorted(set(self.side_values.values()))]
                if self.item_side and self.side_values else [])
        return (gap_tokens() if self.time_gaps else []) + \
            ([grammar()["session_token"]] if self.session_gap is not None else []) + side

    def describe(self) -> dict:
        """The settings (for ``info.json`` / ``metrics.json``), without the item -> value table."""
        return {"behaviors": self.behaviors, "time_gaps": self.time_gaps,
                "session_gap": self.session_gap, "item_side": self.item_side}

    def event_tokens(self, seq: UserSequence, i: int) -> list[str]:
        out: list[str] = []
        if i > 0 and (self.time_gaps or self.session_gap is not None):
            gap = seq.timestamps[i] - seq.timestamps[i - 1]
            if self.session_gap is not None and gap >= self.session_gap:
                out.append(grammar()["session_token"])
            if self.time_gaps and (tok := gap_token(gap)):
                out.append(tok)
        if self.behaviors:
            out.append(behavior_token(seq.behaviors[i]))
        out.append(item_token(seq.items[i]))
        if self.item_side and self.side_values and (value := self.side_values.get(seq.items[i])):
            out.append(side_token(self.item_side, value))
        return out

    def serialize(self, seq: UserSequence) -> str:
        return " ".join(t for i in range(len(seq)) for t in self.event_tokens(seq, i))


def window_events(max_length: int, fmt: StreamFormat) -> int:
    """Events in one training window: ``[BOS]`` plus this many events fit in ``max_length``."""
    span = (max_length - 1) // fmt.max_tokens_per_event
    if span < 2:
        raise ValueError(f"max_length {max_length} holds {max(span, 0)} event(s) of up to "
                         f"{fmt.max_tokens_per_event} token(s) after [BOS]; a training window needs at "
                         f"least 2 (max_length >= {1 + 2 * fmt.max_tokens_per_event})")
    return span


def context_events(max_length: int, fmt: StreamFormat) -> int:
    """Most recent events of a history that scoring, ``predict`` and ``pipeline()`` read: one fewer
    than a training window, so the position after them (plus an appended ``<b>`` / ``[MASK]``) is
    one that training put a target at (see the module docstring)."""
    return window_events(max_length, fmt) - 1


def context_slice(seq: UserSequence, max_length: int, fmt: StreamFormat) -> UserSequence:
    """The most recent :func:`context_events` whole events of ``seq``."""
    keep = context_events(max_length, fmt)
    return seq.slice(max(0, len(seq) - keep), len(seq))


def train_windows(seq: UserSequence, *, max_length: int, fmt: StreamFormat,
                  mode: str = "all") -> list[str]:
    """Cut one training sequence into texts of at most ``max_length`` tokens (with ``[BOS]``).

    Windows are cut from the most recent event backwards so the newest window is always whole;
    ``mode="last"`` keeps only that one (SASRec's choice), ``"all"`` uses every event once.
    """
    if mode not in TRAIN_WINDOWS:
        raise ValueError(f"train_windows must be one of {TRAIN_WINDOWS}, got {mode!r}")
    span = window_events(max_length, fmt)
    texts: list[str] = []
    stop = len(seq)
    while stop > 0:
        start = max(0, stop - span)
        texts.append(fmt.serialize(seq.slice(start, stop)))
        if mode == "last":
            break
        stop = start
    texts.reverse()
    return texts


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Serialized streams -> ids with the tokenizer's template, token by token (ids never hold
    whitespace, so splitting a stream on it is exact; see :func:`encode_tokens`)."""
    return [encode_tokens(tokenizer, text.split(), max_length=max_length) for text in texts]


def examples_dataset(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, *,
                     max_length: int, fmt: StreamFormat) -> Dataset:
    """Ranking rows (history cut by :func:`context_slice`, target, seen items) for ``examples``."""
    vocab = tokenizer.get_vocab()
    unk = tokenizer.unk_token_id
    texts = [fmt.serialize(context_slice(ex.history, max_length, fmt)) for ex in examples]
    input_ids = encode_texts(tokenizer, texts, max_length)
    seen = [sorted({vocab.get(item_token(i), unk) for i in ex.history.items} - {unk})
            for ex in examples]
    from datasets import Dataset

    return Dataset.from_dict({
        "user_id": [ex.user_id for ex in examples],
        "input_ids": input_ids,
        "target": [vocab.get(item_token(ex.target_item), unk) for ex in examples],
        "target_behavior": [ex.target_behavior for ex in examples],
        # the <b> token of the target's behavior (-1 when streams carry no behavior tokens)
        "target_behavior_id": [vocab.get(behavior_token(ex.target_behavior), -1) if fmt.behaviors else -1
                               for ex in examples],
        "seen": seen,
    })


def build_dataset_dict(split: Split, tokenizer: PreTrainedTokenizerBase, *, max_length: int,
                       fmt: StreamFormat, train_windows_mode: str = "all") -> DatasetDict:
    """Tokenize a :class:`Split` into ``train`` / ``validation`` / ``test``: training windows of
    :func:`window_events` events, ranking rows of at most :func:`context_events` events (the same
    for causal and masked models, one- and multi-behavior streams)."""
    users: list[str] = []
    texts: list[str] = []
    for seq in split.train:
        for text in train_windows(seq, max_length=max_length, fmt=fmt, mode=train_windows_mode):
            users.append(seq.user_id)
            texts.append(text)
    from datasets import Dataset, DatasetDict

    train = Dataset.from_dict({"user_id": users, "input_ids": encode_texts(tokenizer, texts, max_length)})
    parts = {"train": train}
    for name in ("validation", "test"):
        examples = getattr(split, name)
        if examples:
            parts[name] = examples_dataset(examples, tokenizer, max_length=max_length, fmt=fmt)
    return DatasetDict(parts)
