"""Split -> DatasetDict: training windows, ranking rows, left truncation, seen items."""
from __future__ import annotations

from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.splits import leave_one_out
from behavior_lm.data.streams import StreamFormat, build_dataset_dict, train_windows
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer


def seq(user: str, items: list[str], behaviors: list[str] | None = None) -> UserSequence:
    n = len(items)
    return UserSequence(user, items, behaviors or ["interact"] * n, list(range(n)), [None] * n,
                        list(range(1, n + 1)))


def test_train_windows_cover_every_event_newest_window_whole():
    s = seq("u", [str(i) for i in range(7)])
    # max_length 4 -> 3 events per window (+[BOS]); cut from the newest backwards
    assert train_windows(s, max_length=4, fmt=StreamFormat()) == ["i:0", "i:1 i:2 i:3", "i:4 i:5 i:6"]
    assert train_windows(s, max_length=4, fmt=StreamFormat(), mode="last") == ["i:4 i:5 i:6"]
    sb = seq("u", ["1", "2", "3"], ["pv", "buy", "pv"])
    # behaviors double the tokens per event: 5 tokens -> 2 events per window
    assert train_windows(sb, max_length=5, fmt=StreamFormat(behaviors=True)) == ["<pv> i:1", "<buy> i:2 <pv> i:3"]


def test_dataset_dict_rows():
    seqs = [seq("a", ["1", "2", "3", "4", "5", "2"]), seq("b", ["3", "1", "4"])]
    split = leave_one_out(seqs)
    tok = build_tokenizer([i for s in seqs for i in s.items], max_length=4)
    dsd = build_dataset_dict(split, tok, max_length=4, fmt=StreamFormat())
    assert set(dsd) == {"train", "validation", "test"}
    ids = tok.convert_tokens_to_ids
    bos = tok.bos_token_id
    # user a trains on 1 2 3 4 -> windows of 3 events: [1] and [2 3 4]; user b on [3]
    assert dsd["train"]["input_ids"] == [[bos, ids("i:1")], [bos] + ids(["i:2", "i:3", "i:4"]),
                                         [bos, ids("i:3")]]
    test_a = dsd["test"][0]
    assert test_a["user_id"] == "a"
    # history 1 2 3 4 5 cut to its last 2 events (one fewer than a training window, so the
    # position read after it was a training target position), target 2 (a repeat)
    assert test_a["input_ids"] == [bos] + ids(["i:4", "i:5"])
    assert test_a["target"] == ids("i:2")
    assert test_a["seen"] == sorted(ids(["i:1", "i:2", "i:3", "i:4", "i:5"]))
    val_b = dsd["validation"][1]
    assert val_b["input_ids"] == [bos, ids("i:3")] and val_b["target"] == ids("i:1")


def test_time_gap_and_session_tokens():
    """Gap buckets are log-spaced ([gap:1m] .. [gap:1w]); a [SESSION] token marks inactivity of at
    least session_gap; the first event of a window and the target never get a gap."""
    ts = [0, 30, 30 + 700, 30 + 700 + 90_000, 30 + 700 + 90_000 + 5]
    s = UserSequence("u", ["1", "2", "3", "4", "5"], ["pv", "pv", "buy", "pv", "cart"], ts, [None] * 5,
                     [1, 2, 3, 4, 5])
    fmt = StreamFormat(behaviors=True, time_gaps=True, session_gap=1800)
    assert fmt.serialize(s) == ("<pv> i:1 <pv> i:2 [gap:10m] <buy> i:3 [SESSION] [gap:1d] <pv> i:4 "
                                "<cart> i:5")
    assert fmt.max_tokens_per_event == 4
    assert fmt.extra_tokens() == ["[gap:1m]", "[gap:10m]", "[gap:1h]", "[gap:1d]", "[gap:1w]", "[SESSION]"]
    windows = train_windows(s, max_length=9, fmt=fmt)               # 2 events per window (+[BOS])
    assert windows == ["<pv> i:1", "<pv> i:2 [gap:10m] <buy> i:3", "<pv> i:4 <cart> i:5"]
    tok = build_tokenizer(s.items, ["pv", "buy", "cart"], extra_tokens=fmt.extra_tokens(), max_length=32)
    ids = tok(fmt.serialize(s))["input_ids"]
    assert tok.unk_token_id not in ids
    split = leave_one_out([s])
    dsd = build_dataset_dict(split, tok, max_length=32, fmt=fmt)
    # the test history ends with the last history event; the target's gap is not given away
    assert tok.convert_ids_to_tokens(dsd["test"][0]["input_ids"])[-2:] == ["<pv>", "i:4"]
    assert dsd["test"][0]["target_behavior_id"] == tok.convert_tokens_to_ids("<cart>")
    plain = StreamFormat()
    assert plain.serialize(s) == "i:1 i:2 i:3 i:4 i:5" and plain.extra_tokens() == []
