"""``behavior-lm update``: new items become new tokens initialised from their neighbours, old
items keep their ids and (without a training step) their scores, the updated run serves new items
and can be updated again, and bad input is refused in one line."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import behavior_lm  # noqa: F401
from behavior_lm.cli.main import main
from behavior_lm.errors import RecipeError
from behavior_lm.evaluation.scoring import next_token_scores
from behavior_lm.arguments import DataArguments
from behavior_lm.update import UpdateSettings, past_sequences, update_run

USERS = ["196", "186", "22", "244", "166"]          # users of the tiny ml-100k run (first 60)


def write_events(path: Path, items: list[str], start: int = 900_000_000) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "timestamp"])
        for k, user in enumerate(USERS):
            for j, item in enumerate(items):
                w.writerow([user, item, start + 100 * k + j])
    return path


def test_update_adds_items_and_leaves_old_ones_alone(tiny_run, tmp_path):
    events = write_events(tmp_path / "new.csv", ["50", "181", "fresh-1", "100", "fresh-2", "1"])
    out = update_run(tiny_run, events, tmp_path / "updated",
                     UpdateSettings(data_format="csv", learning_rate=0.0, num_train_epochs=1))
    old_tok, new_tok = AutoTokenizer.from_pretrained(tiny_run), AutoTokenizer.from_pretrained(out)
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())             # old ids unchanged
    fresh = {new_vocab["i:fresh-1"], new_vocab["i:fresh-2"]}
    assert fresh == {len(old_tok), len(old_tok) + 1}
    old = AutoModelForCausalLM.from_pretrained(tiny_run).eval()
    new = AutoModelForCausalLM.from_pretrained(out).eval()
    assert new.get_input_embeddings().weight.shape[0] == len(new_tok)
    # no training step (lr 0): every old item scores exactly as before
    ids = torch.tensor([[old_tok.bos_token_id, old_vocab["i:50"], old_vocab["i:181"]]])
    before = next_token_scores(old, ids, torch.ones_like(ids))[0]
    after = next_token_scores(new, ids, torch.ones_like(ids))[0]
    assert torch.allclose(after[: len(old_tok)], before, atol=1e-6)    # (a wider matmul: float noise)
    # fresh-1 starts as the mean of the old items within 3 events of it in the users' sequences:
    # each user's last past item, 50, 181 and 100 (the held-out 1 is not trained on, fresh-2 is new)
    emb_old, emb_new = old.get_input_embeddings().weight, new.get_input_embeddings().weight
    past = past_sequences(tiny_run, DataArguments.of_run(tiny_run), {"chunks": []})
    last_past = {past[u].items[-1] for u in USERS}
    neighbours = sorted({old_vocab[f"i:{i}"] for i in ("50", "181", "100", *last_past)})
    assert torch.allclose(emb_new[new_vocab["i:fresh-1"]], emb_old[neighbours].mean(0), atol=1e-6)
    chunk = json.loads((out / "update.json").read_text())["chunks"][0]
    assert chunk["new_items"] == 2 and chunk["users"] == 5 and chunk["held_out"] == 5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["update"]["before"]["num_examples"] == 5
    # the held-out target (item 1) is an old item: before == after when nothing was trained
    assert metrics["update"]["before"]["ndcg@10"] == pytest.approx(metrics["update"]["after"]["ndcg@10"])


def test_updated_run_serves_new_items_and_updates_again(tiny_run, tmp_path, capsys):
    first = write_events(tmp_path / "a.csv", ["50", "fresh-1", "181", "fresh-1", "100"])
    assert main(["update", str(tiny_run), "--events", str(first), "--output_dir", str(tmp_path / "u1"),
                 "--data_format", "csv", "--num_train_epochs", "2", "--learning_rate", "0.01"]) == 0
    rows = pipeline("next-behavior", model=str(tmp_path / "u1"))(["50", "fresh-1"], top_k=5,
                                                                 exclude_seen=False)
    assert len(rows) == 5
    all_items = pipeline("next-behavior", model=str(tmp_path / "u1"))(["50"], top_k=100_000)
    assert "fresh-1" in {r["item"] for r in all_items}                    # a rankable item now
    second = write_events(tmp_path / "b.csv", ["fresh-1", "fresh-3", "50"], start=900_100_000)
    out = update_run(tmp_path / "u1", second, tmp_path / "u2", UpdateSettings(data_format="csv"))
    chain = json.loads((out / "update.json").read_text())
    assert [Path(c["events"]).name for c in chain["chunks"]] == ["a.csv", "b.csv"]
    assert chain["chunks"][1]["new_items"] == 1                           # fresh-1 is known by now
    from behavior_lm.evaluation.run_eval import evaluate_run

    with pytest.raises(RecipeError, match="continued on new events"):
        evaluate_run(out)
    vocab1 = AutoTokenizer.from_pretrained(tmp_path / "u1").get_vocab()
    vocab2 = AutoTokenizer.from_pretrained(out).get_vocab()
    assert all(vocab2[t] == i for t, i in vocab1.items())


def test_update_refusals(tiny_run, tmp_path):
    with pytest.raises(RecipeError, match="no such file"):
        update_run(tiny_run, tmp_path / "missing.csv", tmp_path / "x")
    with pytest.raises(RecipeError, match="not a finished run"):
        update_run(tmp_path, write_events(tmp_path / "e.csv", ["50"]), tmp_path / "y")
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\n196,50,900000000\n196,5 0,900000001\n")
    with pytest.raises(Exception, match="bad.csv"):
        update_run(tiny_run, bad, tmp_path / "z", UpdateSettings(data_format="csv"))
    assert not (tmp_path / "z").exists()


def test_rare_new_items_follow_the_recipes_k_core(tiny_run, tmp_path):
    """The quickstart recipe keeps items with >= 5 events: a new item seen 5 times becomes a token,
    one seen once does not (its event is dropped from training, as a retrain would drop it)."""
    events = write_events(tmp_path / "new.csv", ["50", "fresh-1", "100"])
    with open(events, "a") as fh:
        fh.write("196,rare-1,900009999\n")
    out = update_run(tiny_run, events, tmp_path / "updated",
                     UpdateSettings(data_format="csv", num_train_epochs=1, holdout=False))
    vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    assert "i:fresh-1" in vocab and "i:rare-1" not in vocab
    chunk = json.loads((out / "update.json").read_text())["chunks"][0]
    assert (chunk["new_items"], chunk["new_items_too_rare"], chunk["min_item_events"]) == (1, 1, 5)
    out = update_run(tiny_run, events, tmp_path / "updated-all",
                     UpdateSettings(data_format="csv", num_train_epochs=1, holdout=False, min_item_events=1))
    assert "i:rare-1" in AutoTokenizer.from_pretrained(out).get_vocab()
