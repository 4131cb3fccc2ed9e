"""Split -> token streams -> ``datasets.DatasetDict``.

``train`` rows are windows of a user's training events (``input_ids`` only; the collator makes
the labels). ``validation``/``test`` rows are one prediction each: the history as ``input_ids``
(left-truncated to ``max_length``, so the most recent events stay), the ``target`` item token id and
the ``seen`` item token ids of the whole history (for seen-item filtering).
"""
from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.splits import Example, Split
from behavior_lm.tokenization.behavior_tokenizer import item_token, serialize_events

TRAIN_WINDOWS = ("all", "last")


def _events_text(seq: UserSequence, with_behaviors: bool) -> str:
    return serialize_events(seq.items, seq.behaviors if with_behaviors else None)


def train_windows(seq: UserSequence, *, max_length: int, with_behaviors: bool,
                  mode: str = "all") -> list[str]:
    """Cut one training sequence into texts of at most ``max_length`` tokens (with ``[BOS]``).

    Windows are cut from the most recent event backwards so the newest window is always whole;
    ``mode="last"`` keeps only that one (SASRec's choice), ``"all"`` uses every event once.
    """
    if mode not in TRAIN_WINDOWS:
        raise ValueError(f"train_windows must be one of {TRAIN_WINDOWS}, got {mode!r}")
    per_event = 2 if with_behaviors else 1
    span = max(1, (max_length - 1) // per_event)  # events per window; 1 slot for [BOS]
    texts: list[str] = []
    stop = len(seq)
    while stop > 0:
        start = max(0, stop - span)
        texts.append(_events_text(seq.slice(start, stop), with_behaviors))
        if mode == "last":
            break
        stop = start
    texts.reverse()
    return texts


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> list[list[int]]:
    ids: list[list[int]] = []
    for start in range(0, len(texts), 4096):
        enc = tokenizer(list(texts[start:start + 4096]), truncation=True, max_length=max_length,
                        add_special_tokens=True)
        ids.extend(enc["input_ids"])
    return ids


def _examples_dataset(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, *,
                      max_length: int, with_behaviors: bool) -> Dataset:
    vocab = tokenizer.get_vocab()
    unk = tokenizer.unk_token_id
    texts = [_events_text(ex.history, with_behaviors) for ex in examples]
    input_ids = _encode(tokenizer, texts, max_length)
    seen = [sorted({vocab.get(item_token(i), unk) for i in ex.history.items} - {unk})
            for ex in examples]
    return Dataset.from_dict({
        "user_id": [ex.user_id for ex in examples],
        "input_ids": input_ids,
        "target": [vocab.get(item_token(ex.target_item), unk) for ex in examples],
        "target_behavior": [ex.target_behavior for ex in examples],
        "seen": seen,
    })


def build_dataset_dict(split: Split, tokenizer: PreTrainedTokenizerBase, *, max_length: int,
                       with_behaviors: bool, train_windows_mode: str = "all",
                       reserve: int = 0) -> DatasetDict:
    """Tokenize a :class:`Split` into ``train`` / ``validation`` / ``test``.

    ``reserve`` leaves that many free positions in ranking rows (masked models append ``[MASK]``).
    """
    users: list[str] = []
    texts: list[str] = []
    for seq in split.train:
        for text in train_windows(seq, max_length=max_length, with_behaviors=with_behaviors,
                                  mode=train_windows_mode):
            users.append(seq.user_id)
            texts.append(text)
    train = Dataset.from_dict({"user_id": users, "input_ids": _encode(tokenizer, texts, max_length)})
    parts = {"train": train}
    for name in ("validation", "test"):
        examples = getattr(split, name)
        if examples:
            parts[name] = _examples_dataset(examples, tokenizer, max_length=max_length - reserve,
                                            with_behaviors=with_behaviors)
    return DatasetDict(parts)
