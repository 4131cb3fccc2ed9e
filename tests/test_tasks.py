"""Labels from the log: sequence classification, regression and token labelling datasets."""
from __future__ import annotations

import pytest

from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.splits import leave_one_out
from behavior_lm.data.streams import StreamFormat
from behavior_lm.data.collators import IGNORE_INDEX as IGNORE
from behavior_lm.arguments import DataArguments
from behavior_lm.data.tasks import EventLabeler, build_sequence_task, build_token_task
from behavior_lm.tasks import get_task
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
    args = DataArguments(like_threshold=4.0, intent_behavior="buy")
    for task in ("next-class", "next-rating", "event-class"):
        assert get_task(task).class_names(["rate"], args) == ["value<4", "value>=4"]
        assert get_task(task).class_names(["pv", "buy"], args) == ["pv", "buy"]
    assert get_task("purchase-intent").class_names(["pv", "buy"], args) == ["no buy", "buy"]
    assert get_task("conversion-tag").class_names(["pv", "buy"], args) == ["no conversion", "converts"]
    assert get_task("next-item").class_names(["pv", "buy"], args) == ["pv", "buy"]   # recorded, not used


def test_sequence_task_pairs_and_labels(split):
    tok = build_tokenizer(list("abcde"), template="classification")
    labeler = EventLabeler(["rate"], 4.0, "log.csv")
    dsd = build_sequence_task(split, tok, labeler, max_length=16,
                              fmt=StreamFormat(), examples_per_user=10)
    # user 1 trains on a b c -> targets at positions 1, 2 (b: 2.0 -> 0, c: 4.0 -> 1); user 2 on c
    assert dsd["train"]["labels"] == [0, 1]
    first = tok.convert_ids_to_tokens(dsd["train"][0]["input_ids"])
    assert first == ["[CLS]", "i:a", "[SEP]", "i:b", "[SEP]"]
    test = dsd["test"]
    assert test["labels"] == [0, 0]                      # e: 3.0, b: 1.0
    assert tok.convert_ids_to_tokens(test[0]["input_ids"]) == \
        ["[CLS]", "i:a", "i:b", "i:c", "i:d", "[SEP]", "i:e", "[SEP]"]
    reg = build_sequence_task(split, tok, EventLabeler(["rate"], 4.0, "log.csv", regression=True), max_length=16,
                              fmt=StreamFormat(), examples_per_user=10)
    assert reg["validation"]["labels"] == [1.0, 4.0]


def test_token_task_labels_only_the_held_out_event(split):
    tok = build_tokenizer(list("abcde"), template="classification")
    dsd = build_token_task(split, tok, EventLabeler(["rate"], 4.0, "log.csv"), max_length=16,
                           fmt=StreamFormat())
    assert dsd["train"][0]["labels"] == [IGNORE, 1, 0, 1, IGNORE]     # a b c of user 1
    row = dsd["test"][0]
    assert tok.convert_ids_to_tokens(row["input_ids"]) == ["[CLS]", "i:a", "i:b", "i:c", "i:d", "i:e", "[SEP]"]
    assert row["labels"] == [IGNORE] * 5 + [0, IGNORE]


def test_missing_value_is_a_located_error():
    labeler = EventLabeler(["rate"], 4.0, "log.csv")
    with pytest.raises(DataError, match=r"log\.csv:7: field 'value'"):
        labeler.label("rate", None, 7)


def test_purchase_intent_cuts_labels_and_no_leakage():
    from behavior_lm.data.tasks import build_intent_task, intent_cuts, intent_label

    # 12 events; buys at positions 4 and 10; horizon 3
    beh = ["pv"] * 12
    beh[4] = beh[10] = "buy"
    s = UserSequence("u", [str(i) for i in range(12)], beh, [i * 100 for i in range(12)], [None] * 12,
                     list(range(1, 13)))
    assert intent_cuts(12, 3) == (9, 6, 4)             # test window 9..11, validation 6..8, train cuts 1..3
    assert intent_label(s, 9, "buy", 3, None) == 1     # event 10 is a buy
    assert intent_label(s, 6, "buy", 3, None) == 0
    assert intent_label(s, 2, "buy", 3, None) == 1     # event 4
    assert intent_label(s, 9, "buy", 3, 50) == 0       # the buy is 200 s after event 8: outside 50 s
    tok = build_tokenizer(s.items, ["pv", "buy"], template="classification", max_length=64)
    dsd, summary = build_intent_task([s], tok, fmt=StreamFormat(behaviors=True), max_length=64,
                                     horizon=3, examples_per_user=10)
    assert summary["test_examples"] == summary["validation_examples"] == 1
    assert dsd["test"]["labels"] == [1] and dsd["validation"]["labels"] == [0]
    # training cuts 1..3 only: each label window (c .. c+2) ends before the validation cut (6)
    lengths = [ids.count(tok.convert_tokens_to_ids("<pv>")) + ids.count(tok.convert_tokens_to_ids("<buy>"))
               for ids in dsd["train"]["input_ids"]]
    assert sorted(lengths) == [1, 2, 3]
    assert dsd["train"]["labels"] == [0, 1, 1]          # windows 1..3 (no buy), 2..4, 3..5
    assert tok.convert_ids_to_tokens(dsd["test"]["input_ids"][0])[0] == "[CLS]"
    short = UserSequence("v", ["1", "2"], ["pv", "buy"], [0, 1], [None] * 2, [1, 2])
    assert intent_cuts(len(short), 3) == (None, None, 1)


def test_a_registered_task_is_known_everywhere(tmp_path):
    """Adding a task is one Task subclass and one register_task call: recipes accept it, the data
    pipeline builds its rows through it, and its flags drive the model head."""
    from behavior_lm.data import pipeline as data_pipeline
    from behavior_lm.tasks import TASKS, register_task
    from behavior_lm.tasks.next_class import NextClass
    from behavior_lm.training.recipes import parse_recipe

    class Liked(NextClass):
        name = "liked-toy"
        summary = "a copy of next-class under another name"

        def build_rows(self, ctx):
            self.calls = getattr(self, "calls", 0) + 1
            return super().build_rows(ctx)

    task = register_task(Liked())
    try:
        recipe = tmp_path / "r.yaml"
        recipe.write_text("task: liked-toy\ndataset: ml-100k\nmodel_type: bert\nmax_users: 20\nmax_length: 16\n")
        data_args, model_args, _, _ = parse_recipe(recipe, ["--cache", "false"])
        data = data_pipeline.prepare_data(data_args, template=task.template(model_args.model_type))
        assert task.calls == 1 and data.info["task"] == "liked-toy"
        assert set(data.datasets["train"][0]) >= {"input_ids", "labels"}
        assert get_task("liked-toy").build_model(model_args, data.tokenizer, 16).config.num_labels == 2
        with pytest.raises(Exception, match="model_type must be one of bert, gru, lstm, pretrained for task liked-toy"):
            parse_recipe(recipe, ["--model_type", "gpt2"])
    finally:
        TASKS.pop("liked-toy", None)
        data_pipeline._TASK_ROWS.pop("liked-toy", None)
