"""The behavior tokenizer: vocabulary layout, round trips, unknowns, save/load, truncation."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from behavior_lm.errors import DataError
from behavior_lm.tokenization.behavior_tokenizer import (behavior_token_ids, build_tokenizer,
                                                         grammar, item_id_of, item_mask,
                                                         item_token, item_token_ids)


@pytest.fixture()
def tok():
    # "7" is most frequent, then "42" and "x-1" tie (first appearance decides)
    return build_tokenizer(["42", "7", "x-1", "7"], behaviors=["pv", "cart", "buy"], max_length=8)


def test_vocabulary_layout(tok):
    vocab = tok.get_vocab()
    specials = list(grammar()["special_tokens"].values())
    assert [vocab[t] for t in specials] == list(range(len(specials)))
    n = len(specials)
    assert [vocab[f"<{b}>"] for b in ("pv", "cart", "buy")] == [n, n + 1, n + 2]
    assert [vocab[t] for t in ("i:7", "i:42", "i:x-1")] == [n + 3, n + 4, n + 5]
    assert len(tok) == n + 6
    assert item_token_ids(tok) == [n + 3, n + 4, n + 5]
    assert behavior_token_ids(tok) == {"pv": n, "cart": n + 1, "buy": n + 2}
    assert item_mask(tok, len(tok) + 2).tolist() == [False] * (n + 3) + [True] * 3 + [False] * 2


def test_encode_decode_round_trip(tok):
    text = "<pv> i:42 <buy> i:7"                      # StreamFormat(behaviors=True) of two events
    assert text == "<pv> i:42 <buy> i:7"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "[BOS] " + text
    assert [item_id_of(t) for t in tok.convert_ids_to_tokens(ids) if t.startswith("i:")] == ["42", "7"]


def test_unknown_items_map_to_unk(tok):
    ids = tok("i:42 i:999 <pv> i:nope")["input_ids"]
    assert ids.count(tok.unk_token_id) == 2


def test_left_truncation_keeps_recent_events_and_bos(tok):
    text = " ".join(f"i:{i}" for i in ["42", "7", "x-1"] * 4)
    ids = tok(text, truncation=True, max_length=4)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids[1:]) == ["i:42", "i:7", "i:x-1"]


def test_save_and_autotokenizer_load(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    text = "<cart> i:x-1 i:42"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.truncation_side == "left"
    assert (loaded.pad_token, loaded.mask_token, loaded.bos_token) == ("[PAD]", "[MASK]", "[BOS]")


def test_single_behavior_streams_have_no_behavior_tokens():
    tok = build_tokenizer(["1", "2"])
    assert behavior_token_ids(tok) == {}
    assert " ".join(map(item_token, ["1", "2"])) == "i:1 i:2"


def test_bad_item_ids_are_rejected():
    with pytest.raises(DataError, match="field 'item_id'.*whitespace"):
        build_tokenizer(["ok", "has space"])
    with pytest.raises(DataError, match="empty item catalogue"):
        build_tokenizer([])


HOSTILE = ["[PAD]", "[MASK]", "[SEP]", "[UNK]", "[BOS]", "i:5", "i:[PAD]", "<pv>", "[gap:1m]", "[SESSION]",
           "category:3", "[x]", "a\x00b", "😀", "ü-Ω", "x" * 10_000, "[", "]", "<", ">", "i:", "0"]


def hostile_ids(n: int = 200, seed: int = 0) -> list[str]:
    """The fixed hostile ids plus random ones mixing brackets, prefixes, specials and unicode."""
    import random

    rng = random.Random(seed)
    parts = ["[", "]", "<", ">", "i:", "PAD", "MASK", ":", "\x00", "😀", "é", "#", "0", "9", "_", "-", "/"]
    out = list(HOSTILE)
    while len(out) < n:
        out.append("".join(rng.choice(parts) for _ in range(rng.randint(1, 6))))
    return list(dict.fromkeys(out))


def test_any_item_id_round_trips_through_streams_and_the_pipeline(tmp_path):
    """Encode by id: every id (specials, prefixes, brackets, NUL, emoji, 10k characters) maps to its
    own token in training rows and at inference, and back to the same raw id."""
    from transformers import pipeline

    import behavior_lm  # noqa: F401
    from behavior_lm.data.preprocess import UserSequence
    from behavior_lm.data.splits import leave_one_out
    from behavior_lm.data.streams import StreamFormat, build_dataset_dict
    from behavior_lm.models.auto import build_model
    from behavior_lm.tokenization.behavior_tokenizer import item_id_of
    from behavior_lm.arguments import ModelArguments

    ids = hostile_ids()
    seqs = [UserSequence(f"u{u}", ids[u::7], ["interact"] * len(ids[u::7]), list(range(len(ids[u::7]))),
                         [None] * len(ids[u::7]), list(range(len(ids[u::7])))) for u in range(7)]
    tok = build_tokenizer(ids, max_length=64)
    assert len(tok) == len(ids) + 7
    dsd = build_dataset_dict(leave_one_out(seqs), tok, max_length=64, fmt=StreamFormat())
    split = leave_one_out(seqs)
    seen = []
    for row in dsd["train"]:
        tokens = tok.convert_ids_to_tokens(row["input_ids"])
        assert tokens[0] == "[BOS]" and tok.unk_token_id not in row["input_ids"]
        seen.extend(item_id_of(t) for t in tokens[1:])
    assert sorted(seen) == sorted(i for s in split.train for i in s.items)
    for s, row in zip(seqs, dsd["test"]):
        assert item_id_of(tok.convert_ids_to_tokens(row["target"])) == s.items[-1]
        assert tok.unk_token_id not in row["input_ids"] + row["seen"]
    model = build_model(ModelArguments(hidden_size=16, num_layers=1, num_heads=2, dropout=0.0), tok, 64)
    model.config.behavior_lm = {"behaviors": ["interact"], "filter_seen": False, "max_length": 64,
                                "stream": StreamFormat().describe()}
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    pipe = pipeline("next-behavior", model=str(tmp_path))
    history = ids[:5]                                                # "[PAD]" "[MASK]" "[SEP]" ...
    pre = pipe.preprocess(__import__("behavior_lm.inference.pipelines", fromlist=["x"]).parse_history(history))
    assert [item_id_of(t) for t in pipe.tokenizer.convert_ids_to_tokens(pre["input_ids"][0].tolist())[1:]] == history
    out = pipe(history, top_k=len(ids))
    assert sorted(r["item"] for r in out) == sorted(ids)
    assert pipe(["i:5"], top_k=3) == pipe([("i:5", None)], top_k=3)  # the raw id "i:5", not a stream
