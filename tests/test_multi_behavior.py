"""Multi-behavior streams (browse -> cart -> fav -> buy): scoring the next item as a mixture over
behaviors or given the target's behavior, the repeat floor, and tiny Taobao runs end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import pipeline

import behavior_lm  # noqa: F401
from behavior_lm.cli.main import main
from behavior_lm.evaluation.harness import repeat_scorer
from behavior_lm.evaluation.run_eval import evaluate_run
from behavior_lm.evaluation.scoring import next_item_scores
from behavior_lm.inference.pipelines import parse_history
from behavior_lm.models.auto import build_model
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer, item_mask
from behavior_lm.arguments import ModelArguments
from behavior_lm.data.collators import BehaviorCollator

from conftest import REPO, shared_dataset

BEHAVIORS = ["pv", "cart", "buy"]
TEXTS = ["<pv> i:1 <cart> i:1 <pv> i:4", "<pv> i:7", "<buy> i:2 <pv> i:3 <pv> i:3 <cart> i:9"]


def tiny(model_type: str):
    torch.manual_seed(0)
    tok = build_tokenizer([str(i) for i in range(12)], BEHAVIORS,
                          template="masked" if model_type == "bert4rec" else "causal", max_length=24)
    model = build_model(ModelArguments(model_type=model_type, hidden_size=16, num_layers=1, num_heads=2,
                                       dropout=0.0), tok, 24).eval()
    return tok, model


def last_logits(model, tok, text: str) -> torch.Tensor:
    ids = tok(text, return_tensors="pt")["input_ids"]
    if type(model).__name__.endswith("ForMaskedLM"):
        ids = torch.cat([ids, torch.tensor([[tok.mask_token_id]])], dim=1)
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def item_log_probs(logits: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.masked_fill(~cand, float("-inf")), dim=-1)


@pytest.mark.parametrize("model_type", ["gpt2", "gru", "bert4rec"])
def test_mixture_and_conditioned_scores_match_brute_force_on_padded_batches(model_type):
    tok, model = tiny(model_type)
    cand = item_mask(tok, model.get_output_embeddings().out_features)
    b_ids = torch.tensor(tok.convert_tokens_to_ids([f"<{b}>" for b in BEHAVIORS]))
    batch = BehaviorCollator(tok.pad_token_id)([{"input_ids": tok(t)["input_ids"]} for t in TEXTS])
    assert (batch["attention_mask"] == 0).any()                     # really padded
    mixture = next_item_scores(model, batch["input_ids"], batch["attention_mask"], cand, b_ids)
    given = torch.tensor(tok.convert_tokens_to_ids(["<buy>", "<cart>", "<pv>"]))
    conditioned = next_item_scores(model, batch["input_ids"], batch["attention_mask"], cand, b_ids, given)
    for row, text in enumerate(TEXTS):
        if model_type == "bert4rec":                                 # no P(b|h): uniform weights
            log_pb = torch.full((3,), -torch.log(torch.tensor(3.0)))
        else:
            log_pb = torch.log_softmax(last_logits(model, tok, text)[b_ids], dim=-1)
        per_b = torch.stack([item_log_probs(last_logits(model, tok, f"{text} <{b}>"), cand) for b in BEHAVIORS])
        expected = torch.logsumexp(log_pb.unsqueeze(1) + per_b, dim=0)
        assert torch.allclose(mixture[row][cand], expected[cand], atol=1e-5)
        want = last_logits(model, tok, f"{text} {tok.convert_ids_to_tokens(int(given[row]))}")
        assert torch.allclose(conditioned[row][cand], want[cand], atol=1e-5)


def test_one_behavior_streams_are_plain_next_token_scores():
    tok = build_tokenizer([str(i) for i in range(12)], max_length=16)
    model = build_model(ModelArguments(hidden_size=16, num_layers=1, num_heads=2, dropout=0.0), tok, 16).eval()
    ids = tok("i:1 i:2", return_tensors="pt")["input_ids"]
    got = next_item_scores(model, ids, torch.ones_like(ids), item_mask(tok), torch.tensor([], dtype=torch.long))
    with torch.no_grad():
        assert torch.allclose(got[0], model(input_ids=ids).logits[0, -1], atol=1e-5)


def test_repeat_floor_ranks_own_items_by_frequency_then_recency():
    tok = build_tokenizer([str(i) for i in range(6)], ["pv", "buy"], max_length=16)
    ids = tok.convert_tokens_to_ids
    train = Dataset.from_dict({"input_ids": [ids(["<pv>", "i:5", "<pv>", "i:5", "<pv>", "i:4"])]})
    hist = ids(["[BOS]", "<pv>", "i:1", "<pv>", "i:2", "<buy>", "i:1", "<pv>", "i:3"])
    score = repeat_scorer(train, len(tok), item_mask(tok))
    out = score({"input_ids": torch.tensor([hist]), "attention_mask": torch.ones(1, len(hist), dtype=torch.long)})[0]
    items = tok.convert_ids_to_tokens(torch.nonzero(item_mask(tok)).squeeze(1).tolist())
    ranked = [items[i] for i in out[item_mask(tok)].argsort(descending=True).tolist()]
    # i:1 twice; then i:3 (more recent) before i:2; then unseen items by popularity (5 > 4 > rest)
    assert ranked[:5] == ["i:1", "i:3", "i:2", "i:5", "i:4"]


# ------------------------------------------------------------------ Taobao, tiny, end to end
TAOBAO_TINY = ["--max_users", "60", "--max_length", "64", "--hidden_size", "16", "--num_layers", "1",
               "--num_heads", "1", "--num_train_epochs", "2", "--per_device_train_batch_size", "16",
               "--warmup_steps", "0", "--dataloader_num_workers", "0", "--disable_tqdm", "true"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe,scoring", [("gpt2-next-event", "mixture"), ("llama-next-buy", "target behavior")])
def test_taobao_runs(recipe, scoring, tmp_path):
    shared_dataset("taobao")
    out = tmp_path / recipe
    assert main(["train", str(REPO / "recipes" / "taobao" / f"{recipe}.yaml"), *TAOBAO_TINY,
                 "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"]["behavior_scoring"] == scoring
    assert metrics["protocol"]["filter_seen"] is False
    assert set(metrics["baselines"]["test"]) == {"popularity", "markov", "repeat"}
    assert metrics["data"]["with_behaviors"] is True
    assert sorted(metrics["data"]["prepared"]["behaviors"]) == ["buy", "cart", "fav", "pv"]
    if recipe == "gpt2-next-event":                                # P(b | h) from the same model
        nb = metrics["next_behavior"]
        assert set(nb["behaviors"]) == {"pv", "cart", "fav", "buy"}
        assert {"argmax", "prior-corrected", "majority (floor)", "same as last (floor)"} <= set(nb)
        assert "| prior-corrected |" in (out / "results.md").read_text()
    if recipe == "llama-next-buy":
        assert "next_behavior" not in metrics                         # every target is a buy
        assert "last 'buy' event" in metrics["protocol"]["target"]
        assert metrics["test"]["num_examples"] < 60                 # only users who buy
    results, _ = evaluate_run(out)                                   # the harness agrees with the Trainer
    assert results[metrics["model_type"]]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)
    pipe = pipeline("next-behavior", model=str(out))
    history = [("4021", "pv")]
    out_items = pipe(history, behavior="buy", top_k=3, return_behaviors=True)
    assert [r["behavior"] for r in out_items["items"]] == ["buy"] * 3
    assert sorted(r["behavior"] for r in out_items["behaviors"]) == ["buy", "cart", "fav", "pv"]
    assert sum(r["score"] for r in out_items["behaviors"]) == pytest.approx(1.0, abs=1e-5)


def test_next_behavior_metrics_hand_computed():
    from behavior_lm.evaluation.metrics import average_precision
    from behavior_lm.evaluation.next_behavior import next_behavior_metrics

    names = ["pv", "buy"]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.95, 0.05]])
    truth = np.array([0, 1, 1, 0])
    prior = np.array([0.75, 0.25])                       # log-odds shift: buy wins when P(buy) > 0.25
    m = next_behavior_metrics(probs, truth, names, prior, last=np.array([0, 0, 1, -1]))
    assert m["argmax"]["accuracy"] == 0.5 and m["argmax"]["recall_buy"] == 0.0
    assert m["prior-corrected"]["recall_buy"] == 0.5 and m["prior-corrected"]["precision_buy"] == 1.0
    assert m["prior-corrected"]["confusion"] == [[2, 0], [1, 1]]
    assert m["majority (floor)"]["accuracy"] == 0.5
    assert m["same as last (floor)"]["confusion"] == [[2, 0], [1, 1]]
    assert m["argmax"]["balanced_accuracy"] == 0.5
    # AP over P(buy): ranking 0.3 (buy), 0.2 (buy), 0.1, 0.05 -> precision 1 at both positives
    assert m["average_precision_buy"] == 1.0
    # a tie group is one threshold: a constant scorer gets the positive rate
    assert average_precision(np.array([1, 0, 0, 0]), np.full(4, 0.5)) == 0.25
    assert average_precision(np.array([0, 1, 1]), np.array([0.9, 0.5, 0.5])) == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 30), rng.random(30)
    order = np.argsort(-s)
    brute = np.mean([y[order][: k + 1].mean() for k in range(30) if y[order][k]])
    assert average_precision(y, s) == pytest.approx(brute)


@pytest.mark.slow
def test_taobao_purchase_intent_run(tmp_path):
    shared_dataset("taobao")
    out = tmp_path / "intent"
    assert main(["train", str(REPO / "recipes" / "taobao" / "gru-purchase-intent.yaml"), *TAOBAO_TINY,
                 "--examples_per_user", "4", "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "purchase-intent" and metrics["data"]["class_names"] == ["no buy", "buy"]
    split = metrics["data"]["split"]
    assert split["kind"] == "purchase-intent" and split["test_examples"] == metrics["test"]["num_examples"]
    for key in ("roc_auc", "average_precision", "f1_1", "precision_1", "recall_1"):
        assert key in metrics["test"]
    assert metrics["baselines"]["test"]["majority class"]["roc_auc"] == 0.5
    results, _ = evaluate_run(out)
    assert results["gru"]["roc_auc"] == pytest.approx(metrics["test"]["roc_auc"], abs=1e-6)
    assert "'buy' within the next 10 events" in metrics["protocol"]["target"]


@pytest.mark.slow
def test_synthetic_social_run_reports_next_behavior(tmp_path, monkeypatch):
    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "social"
    assert main(["train", str(REPO / "recipes" / "synthetic" / "gru-social.yaml"), "--max_users", "80",
                 "--num_train_epochs", "1", "--hidden_size", "16", "--disable_tqdm", "true",
                 "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["data"]["prepared"]["behaviors"]) == {"view", "like", "comment", "share", "follow"}
    assert "SYNTHETIC" in metrics["data"]["terms"]
    assert set(metrics["next_behavior"]["behaviors"]) == {"view", "like", "comment", "share", "follow"}


def _seq(events: str, user: str = "u") -> "UserSequence":
    """``"pv:a cart:a pv:b"`` -> a UserSequence with timestamps 0, 60, 120, ..."""
    from behavior_lm.data.preprocess import UserSequence

    pairs = [e.split(":") for e in events.split()]
    n = len(pairs)
    return UserSequence(user, [i for _, i in pairs], [b for b, _ in pairs], [60 * k for k in range(n)],
                        [None] * n, list(range(1, n + 1)))


def test_conversion_labels_hand_computed():
    from behavior_lm.data.collators import IGNORE_INDEX as IGNORE
    from behavior_lm.data.tasks import conversion_labels

    seq = _seq("pv:a pv:b cart:a pv:c pv:a pv:b | buy:b pv:d cart:c fav:a buy:z".replace(" |", ""))
    #           0    1    2      3    4    5      6     7    8      9     10      cut = 6
    labels = conversion_labels(seq, 6, browse="pv", convert=("cart", "buy"), horizon=3, seconds=None)
    # a at 0 is carted at 2 (inside the history): no label; a at 4 is open, not converted in 6..8
    # b at 1 and 5 are open and bought at 6; c at 3 is open and carted at 8 (inside the horizon)
    assert labels == [IGNORE, 1, IGNORE, 1, 0, 1]
    assert conversion_labels(seq, 6, browse="pv", convert=("cart", "buy"), horizon=2,
                             seconds=None) == [IGNORE, 1, IGNORE, 0, 0, 1]    # c's cart is event 8
    # only buys convert, and only within 30 s of the last history event (b's buy is 60 s later)
    assert conversion_labels(seq, 6, browse="pv", convert=("buy",), horizon=5,
                             seconds=30) == [0, 0, IGNORE, 0, 0, 0]


def test_conversion_task_rows_and_heuristic_floor():
    from behavior_lm.data.streams import StreamFormat
    from behavior_lm.data.collators import IGNORE_INDEX as IGNORE
    from behavior_lm.data.tasks import build_conversion_task
    from behavior_lm.evaluation.task_metrics import best_f1_threshold, floor_metrics, heuristic_scores

    seqs = [_seq("pv:a pv:a pv:b pv:c pv:a cart:a pv:d pv:b buy:b pv:e pv:c cart:c", user=f"u{k}")
            for k in range(3)]
    tok = build_tokenizer("abcde", ["pv", "cart", "buy"], template="classification", max_length=40)
    dsd, summary = build_conversion_task(seqs, tok, fmt=StreamFormat(behaviors=True), max_length=40,
                                         horizon=2, examples_per_user=3)
    assert summary["test_examples"] == 3 and summary["kind"] == "conversion-tag"
    row_ids, row_labels = dsd["test"][0]["input_ids"], dsd["test"][0]["labels"]
    tokens = tok.convert_ids_to_tokens(row_ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(row_ids) == 2 + 2 * 10
    tagged = {i: y for i, y in enumerate(row_labels) if y != IGNORE}
    assert all(tokens[i].startswith("i:") and tokens[i - 1] == "<pv>" for i in tagged)
    # test cut 10: a and b are converted inside the history (untagged); c, d, e are open and only
    # c converts in events 10..11 (cart at 11)
    assert sorted(tokens[i] for i in tagged) == ["i:c", "i:d", "i:e"]
    assert [tokens[i] for i, y in tagged.items() if y == 1] == ["i:c"]
    assert summary["test_tagged_tokens"] == 3 * len(tagged)
    # the heuristic counts the item's occurrences in the row (+ recency below one)
    scores = heuristic_scores("conversion-tag", dsd["test"], tok)
    first = [row_ids.count(row_ids[i]) + i / (len(row_ids) + 1) for i in sorted(tagged)]
    assert scores[:len(first)].tolist() == pytest.approx(first)
    assert best_f1_threshold(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == pytest.approx(0.45)
    floors = floor_metrics("conversion-tag", dsd["train"], dsd["test"], 2, tok)
    assert floors["majority class"]["roc_auc"] == 0.5 and "repeat views (heuristic)" in floors


@pytest.mark.slow
def test_taobao_conversion_tag_run(tmp_path):
    shared_dataset("taobao")
    out = tmp_path / "conversion"
    assert main(["train", str(REPO / "recipes" / "taobao" / "bert-conversion-tag.yaml"), *TAOBAO_TINY,
                 "--examples_per_user", "4", "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    split = metrics["data"]["split"]
    assert split["kind"] == "conversion-tag" and split["test_tagged_tokens"] == metrics["test"]["num_examples"]
    for key in ("roc_auc", "average_precision", "f1_1", "f1_1_tuned", "tuned_threshold"):
        assert key in metrics["test"]
    floors = metrics["baselines"]["test"]
    assert floors["majority class"]["roc_auc"] == 0.5
    assert floors["repeat views (heuristic)"]["num_examples"] == metrics["test"]["num_examples"]
    results, _ = evaluate_run(out)
    assert results["bert"]["average_precision"] == pytest.approx(metrics["test"]["average_precision"], abs=1e-6)
    assert "still-unconverted 'pv'" in metrics["protocol"]["target"]
    tagger = pipeline("token-classification", model=str(out))
    assert {r["entity"] for r in tagger("<pv> i:4021 <pv> i:4021")} <= {"no conversion", "converts"}


def test_item_side_reader_and_stream(tmp_path):
    from behavior_lm.data.readers import read_item_side
    from behavior_lm.data.sources import load_item_side
    from behavior_lm.arguments import DataArguments
    from behavior_lm.data.streams import StreamFormat
    from behavior_lm.data.collators import IGNORE_INDEX as IGNORE
    from behavior_lm.data.tasks import _token_row
    from behavior_lm.errors import DataError

    f = tmp_path / "log.csv"
    f.write_text("u,item,cat,kind,ts\n1,a,10,pv,1\n1,b,20 x,pv,2\n2,a,11,buy,3\n")
    values, conflicts = read_item_side(f, "cat", columns={"user_id": "u", "item_id": "item"})
    assert values == {"a": "10", "b": "20_x"} and conflicts == 1        # a keeps its first value
    with pytest.raises(DataError, match=r"log\.csv:1: field 'genre': no column 'genre'"):
        read_item_side(f, "genre", columns={"item_id": "item"})
    recipe = DataArguments(dataset="my-log", data_path=str(f), data_format="table", item_side="cat",
                           columns="user_id=u,item_id=item,behavior=kind,timestamp=ts")
    assert load_item_side(recipe.dataset, "cat", recipe.data_path, recipe.reader_kwargs())[0] == values
    f.write_text("u,item,cat\n1,a,10\n1,b,\n")
    with pytest.raises(DataError, match=r"log\.csv:3: field 'cat': empty 'cat' value"):
        read_item_side(f, "cat", columns={"item_id": "item"})

    seq = _seq("pv:a cart:b pv:z")
    fmt = StreamFormat(behaviors=True, item_side="cat", side_values={"a": "10", "b": "20_x"})
    assert fmt.serialize(seq) == "<pv> i:a cat:10 <cart> i:b cat:20_x <pv> i:z"   # z has no value
    assert fmt.extra_tokens() == ["cat:10", "cat:20_x"] and fmt.max_tokens_per_event == 3
    assert "side_values" not in fmt.describe()
    tok = build_tokenizer("abz", ["pv", "cart"], template="classification", max_length=20,
                          extra_tokens=fmt.extra_tokens())
    ids, labels = _token_row(seq, [1, 0, 1], tok, tok.get_vocab(), 20, fmt)
    tokens = tok.convert_ids_to_tokens(ids)
    assert [tokens[i] for i, y in enumerate(labels) if y != IGNORE] == ["i:a", "i:b", "i:z"]  # on items


@pytest.mark.slow
def test_taobao_item_side_tokens_run(tmp_path):
    shared_dataset("taobao")
    out = tmp_path / "side"
    assert main(["train", str(REPO / "recipes" / "taobao" / "llama-next-event-category.yaml"), *TAOBAO_TINY,
                 "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["stream"]["item_side"] == "category"
    side = json.loads((out / "item_side.json").read_text())
    assert side["column"] == "category" and len(side["values"]) == metrics["data"]["prepared"]["items"]
    results, _ = evaluate_run(out)
    assert results["llama"]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)
    pipe = pipeline("next-behavior", model=str(out))
    item = next(iter(side["values"]))
    pre = pipe.preprocess(parse_history([(item, "pv")]))              # inference writes the side token too
    tokens = pipe.tokenizer.convert_ids_to_tokens(pre["input_ids"][0].tolist())
    assert tokens == ["[BOS]", "<pv>", f"i:{item}", f"category:{side['values'][item]}"]
    assert len(pipe([(item, "pv")], top_k=3)) == 3


@pytest.mark.slow
def test_taobao_case_study_runs_every_recipe_on_a_slice(tmp_path):
    """The benchmark script, CI-sized: every Taobao recipe on 60 users, one epoch, tiny models."""
    import os
    import subprocess
    import sys

    shared_dataset("taobao")
    out = tmp_path / "taobao"
    tiny = [a if a != "2" else "1" for a in TAOBAO_TINY]                          # one epoch
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "taobao_case_study.py"), "--output_dir", str(out),
                           *tiny, "--examples_per_user", "4"], capture_output=True, text=True,
                          env={**os.environ, "BEHAVIOR_LM_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "case_study.md").read_text()
    recipes = sorted(p.stem for p in (REPO / "recipes" / "taobao").glob("*.yaml"))
    assert all((out / name / "metrics.json").is_file() for name in recipes)
    for heading in ("What will this user do next", "What will this user buy next", "Next behavior type",
                    "Purchase intent", "Conversion tagging"):
        assert f"## {heading}" in report
    for row in ("| repeat (floor) |", "| buy rate (heuristic) (floor) |", "| repeat views (heuristic) (floor) |",
                "+ category tokens", "no (blind)", "+ gaps/sessions"):
        assert row in report
    for png in ("next_behavior_confusion.png", "purchase_intent_pr.png", "conversion_tag_pr.png"):
        assert (out / png).stat().st_size > 10_000
