"""The behavior tokenizer: vocabulary layout, round trips, unknowns, save/load, truncation."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from behavior_lm.errors import DataError
from behavior_lm.tokenization.behavior_tokenizer import (behavior_token_ids, build_tokenizer,
                                                         grammar, item_id_of, item_mask,
                                                         item_token_ids, serialize_events)


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
    text = serialize_events(["42", "7"], ["pv", "buy"])
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
    text = serialize_events(["42", "7", "x-1"] * 4)
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
    assert serialize_events(["1", "2"]) == "i:1 i:2"


def test_bad_item_ids_are_rejected():
    with pytest.raises(DataError, match="field 'item_id'.*whitespace"):
        build_tokenizer(["ok", "has space"])
    with pytest.raises(DataError, match="empty item catalogue"):
        build_tokenizer([])
