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
from behavior_lm.models.auto import build_model
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer, item_mask
from behavior_lm.training.arguments import ModelArguments
from behavior_lm.training.collators import BehaviorCollator

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
