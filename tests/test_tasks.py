"""Labels from the log: sequence classification, regression and token labelling datasets."""
from __future__ import annotations

import pytest

from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.splits import leave_one_out
from behavior_lm.data.tasks import (IGNORE, EventLabeler, build_sequence_task, build_token_task,
                                    class_names)
from behavior_lm.errors import DataError
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer


def seq(user, items, values, behaviors=None):
    n = len(items)
    return UserSequence(user, items, behaviors or ["rate"] * n, list(range(n)), values,
                        list(range(10 * int(user), 10 * int(user) + n)))


@pytest.fixture()
def split():
    return leave_one_out([seq("1", ["a", "b", "c", "d", "e"], [5.0, 2.0, 4.0, 1.0, 3.0]),
                          seq("2", ["c", "a", "b"], [4.0, 4.0, 1.0])], source="log.csv")


def test_class_names():
    assert class_names(["rate"], 4.0) == ["value<4", "value>=4"]
    assert class_names(["pv", "buy"], 4.0) == ["pv", "buy"]


def test_sequence_task_pairs_and_labels(split):
    tok = build_tokenizer(list("abcde"), template="classification")
    labeler = EventLabeler(["rate"], 4.0, "log.csv")
    dsd = build_sequence_task(split, tok, labeler, task="next-class", max_length=16,
                              with_behaviors=False, examples_per_user=10)
    # user 1 trains on a b c -> targets at positions 1, 2 (b: 2.0 -> 0, c: 4.0 -> 1); user 2 on c
    assert dsd["train"]["labels"] == [0, 1]
    first = tok.convert_ids_to_tokens(dsd["train"][0]["input_ids"])
    assert first == ["[CLS]", "i:a", "[SEP]", "i:b", "[SEP]"]
    test = dsd["test"]
    assert test["labels"] == [0, 0]                      # e: 3.0, b: 1.0
    assert tok.convert_ids_to_tokens(test[0]["input_ids"]) == \
        ["[CLS]", "i:a", "i:b", "i:c", "i:d", "[SEP]", "i:e", "[SEP]"]
    reg = build_sequence_task(split, tok, labeler, task="next-rating", max_length=16,
                              with_behaviors=False, examples_per_user=10)
    assert reg["validation"]["labels"] == [1.0, 4.0]


def test_token_task_labels_only_the_held_out_event(split):
    tok = build_tokenizer(list("abcde"), template="classification")
    dsd = build_token_task(split, tok, EventLabeler(["rate"], 4.0, "log.csv"), max_length=16,
                           with_behaviors=False)
    assert dsd["train"][0]["labels"] == [IGNORE, 1, 0, 1, IGNORE]     # a b c of user 1
    row = dsd["test"][0]
    assert tok.convert_ids_to_tokens(row["input_ids"]) == ["[CLS]", "i:a", "i:b", "i:c", "i:d", "i:e", "[SEP]"]
    assert row["labels"] == [IGNORE] * 5 + [0, IGNORE]


def test_missing_value_is_a_located_error():
    labeler = EventLabeler(["rate"], 4.0, "log.csv")
    with pytest.raises(DataError, match=r"log\.csv:7: field 'value'"):
        labeler.label("next-class", "rate", None, 7)
