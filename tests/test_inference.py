"""pipeline("next-behavior"), `behavior-lm predict`, push/model card, report, evaluate modules.

Tiny models are built here (every registered model type); their pipeline probabilities are checked
against a brute-force softmax over the full forward logits. The run-directory tests read the one
tiny ml-100k run of the session (``tiny_run`` in conftest).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from transformers import pipeline

import behavior_lm  # noqa: F401  (registers the task and the model classes)
from behavior_lm.cli.main import main
from behavior_lm.evaluation.evaluate_modules import metric_path
from behavior_lm.evaluation.metrics import (accuracy, mae, precision_recall_f1, ranking_metrics,
                                            rmse, roc_auc)
from behavior_lm.inference.pipelines import EMPTY_NOTE, NextBehaviorPipeline, parse_history
from behavior_lm.models.auto import MODEL_TYPES, build_model
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer, item_token_ids
from behavior_lm.arguments import ModelArguments

ITEMS = [str(i) for i in range(20)]


def save_tiny(model_type: str, path: Path, behaviors=(), filter_seen: bool = False) -> Path:
    torch.manual_seed(0)
    template = "masked" if model_type == "bert4rec" else "causal"
    tok = build_tokenizer(ITEMS, list(behaviors), template=template, max_length=24)
    model = build_model(ModelArguments(model_type=model_type, hidden_size=16, num_layers=1,
                                       num_heads=2, dropout=0.0), tok, 24).eval()
    model.config.behavior_lm = {"behaviors": list(behaviors) or ["interact"], "filter_seen": filter_seen}
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def brute_force_items(pipe, text: str) -> torch.Tensor:
    """P(item) after ``text`` from the full forward logits (no shortcut of ours)."""
    tok, model = pipe.tokenizer, pipe.model
    ids = tok(text, return_tensors="pt")["input_ids"]
    if type(model).__name__.endswith("ForMaskedLM"):
        ids = torch.cat([ids, torch.tensor([[tok.mask_token_id]])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    items = torch.tensor(item_token_ids(tok))
    probs = torch.zeros_like(logits)
    probs[items] = torch.softmax(logits[items], dim=-1)
    return probs


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_pipeline_matches_brute_force_for_every_model_type(model_type, tmp_path):
    pipe = pipeline("next-behavior", model=str(save_tiny(model_type, tmp_path)))
    assert isinstance(pipe, NextBehaviorPipeline)
    assert type(pipe.model).__name__.endswith("ForMaskedLM") == (model_type == "bert4rec")
    out = pipe(["3", "7", 11], top_k=len(ITEMS))
    probs = brute_force_items(pipe, "i:3 i:7 i:11")
    assert [r["item"] for r in out][:5] == [pipe.tokenizer.convert_ids_to_tokens(int(i))[2:]
                                            for i in probs.topk(5).indices]
    for row in out:
        assert row["score"] == pytest.approx(float(probs[pipe.tokenizer.convert_tokens_to_ids(f"i:{row['item']}")]),
                                             abs=1e-6)
        assert row["behavior"] == "interact"
    assert sum(r["score"] for r in out) == pytest.approx(1.0, abs=1e-5)
    scores = [r["score"] for r in out]
    assert scores == sorted(scores, reverse=True)


def test_history_forms_unknown_items_empty_history_and_seen(tmp_path, caplog):
    pipe = pipeline("next-behavior", model=str(save_tiny("gpt2", tmp_path)))
    ids = pipe(["3", "7"], top_k=5)
    assert pipe([3, 7], top_k=5) == ids
    assert pipe("i:3 i:7", top_k=5) == ids
    assert pipe("3, 7", top_k=5) == ids
    with caplog.at_level(logging.WARNING):
        assert pipe(["3", "unknown-item", "7"], top_k=5) == ids
    assert "dropped 1 unknown item" in caplog.text and "unknown-item" in caplog.text
    batch = pipe([["3", "7"], "i:3 i:7", ["5"]], top_k=5)
    assert batch[0] == ids and batch[1] == ids and len(batch[2]) == 5
    empty = pipe([], top_k=3)
    assert len(empty) == 3 and all(r["note"] == EMPTY_NOTE for r in empty)
    assert pipe(["nope"], top_k=3) == empty                      # only unknown items: same fallback
    assert all("note" not in r for r in ids)
    # exclude_seen drops the history's items and keeps the others' probabilities unchanged
    full = {r["item"]: r["score"] for r in pipe(["3", "7"], top_k=len(ITEMS))}
    kept = pipe(["3", "7"], top_k=len(ITEMS), exclude_seen=True)
    assert {r["item"] for r in kept} == set(full) - {"3", "7"}
    assert all(r["score"] == pytest.approx(full[r["item"]]) for r in kept)
    with pytest.raises(ValueError, match="top_k"):
        pipe(["3"], top_k=0)
    with pytest.raises(ValueError, match="not one this model knows"):
        pipe(["3"], behavior="buy")
    assert pipe(["3"], behavior="interact", top_k=5) == pipe(["3"], top_k=5)  # the only behavior


def test_long_history_keeps_the_most_recent_events(tmp_path):
    pipe = pipeline("next-behavior", model=str(save_tiny("gpt2", tmp_path)))
    long = [str(i % 20) for i in range(100)]
    # max_length 24: training windows hold [BOS] + 23 events, scored histories one event fewer
    recent = long[-22:]
    assert pipe(long, top_k=5) == pipe(recent, top_k=5)
    assert pipe.preprocess(parse_history(long))["input_ids"].shape[1] == 23
    assert pipe(long, top_k=5) != pipe(long[-21:], top_k=5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("behaviors", [(), ("pv", "buy")], ids=["one-behavior", "multi-behavior"])
def test_batched_calls_equal_single_calls(model_type, behaviors, tmp_path):
    pipe = pipeline("next-behavior", model=str(save_tiny(model_type, tmp_path, behaviors=behaviors)))
    b = list(behaviors) or [None]
    histories = [[(str(i % 20), b[i % len(b)]) for i in range(n)] for n in (1, 5, 2, 30, 0, 9)]
    if not behaviors:
        histories = [[item for item, _ in h] for h in histories]
    single = [pipe(h, top_k=4) for h in histories]
    for size in (1, 4, 64):
        batched = pipe(histories, top_k=4, batch_size=size)
        for got, want in zip(batched, single):
            assert [r["item"] for r in got] == [r["item"] for r in want]
            assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)
    if behaviors:
        got, want = pipe(histories, behavior="buy", top_k=3)[3], pipe(histories[3], behavior="buy", top_k=3)
        assert [(r["item"], r["behavior"]) for r in got] == [(r["item"], r["behavior"]) for r in want]
        # the same scores up to float32 rounding: a batched matmul may sum in another order
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)


def test_bad_pipeline_inputs_are_clear_errors(tmp_path):
    pipe = pipeline("next-behavior", model=str(save_tiny("gpt2", tmp_path)))
    for bad, match in [(None, "a history is"), (5, "a history is"), (b"3 7", "a history is"),
                       ([50.0], "strings or integers"), ([None], "strings or integers"),
                       (["3 7"], "whitespace"), ([["3", ["7"]]], "not lists")]:
        with pytest.raises(ValueError, match=match):
            pipe(bad)
    for top_k in (1.7, 0, True, "3"):
        with pytest.raises(ValueError, match="top_k"):
            pipe(["3"], top_k=top_k)
    with pytest.raises(ValueError, match="batch_size"):
        pipe([["3"]], batch_size=0)
    # a list and a string in one list: a batch of two histories, not one history of unknown items
    assert pipe([["3"], "3 7"], top_k=2) == [pipe(["3"], top_k=2), pipe(["3", "7"], top_k=2)]


@pytest.mark.parametrize("model_type", ["gpt2", "gru"])
def test_multi_behavior_mixture_and_conditioning(model_type, tmp_path, caplog):
    pipe = pipeline("next-behavior", model=str(save_tiny(model_type, tmp_path, behaviors=["pv", "buy"])))
    history = [("3", "pv"), ("3", "buy"), ("8", "pv")]
    text = "<pv> i:3 <buy> i:3 <pv> i:8"
    assert parse_history(text).events == [("3", "pv"), ("3", "buy"), ("8", "pv")]
    out = pipe(history, top_k=len(ITEMS), return_behaviors=True)
    # P(next behavior): softmax over the behavior tokens at the last position
    tok = pipe.tokenizer
    with torch.no_grad():
        last = pipe.model(**tok(text, return_tensors="pt")).logits[0, -1]
    b_ids = tok.convert_tokens_to_ids(["<pv>", "<buy>"])
    p_b = torch.softmax(last[b_ids], dim=-1)
    got = {r["behavior"]: r["score"] for r in out["behaviors"]}
    assert got["pv"] == pytest.approx(float(p_b[0]), abs=1e-6)
    assert got["buy"] == pytest.approx(float(p_b[1]), abs=1e-6)
    # the item distribution is the mixture sum_b P(b|h) P(item|h,b)
    cond = {b: brute_force_items(pipe, f"{text} <{b}>") for b in ("pv", "buy")}
    mixture = p_b[0] * cond["pv"] + p_b[1] * cond["buy"]
    for row in out["items"]:
        tid = tok.convert_tokens_to_ids(f"i:{row['item']}")
        assert row["score"] == pytest.approx(float(mixture[tid]), abs=1e-6)
        best = "pv" if p_b[0] * cond["pv"][tid] >= p_b[1] * cond["buy"][tid] else "buy"
        assert row["behavior"] == best
    # "what will they buy next": P(item | h, <buy>)
    buy = pipe(history, behavior="buy", top_k=5)
    assert [r["behavior"] for r in buy] == ["buy"] * 5
    for row in buy:
        tid = tok.convert_tokens_to_ids(f"i:{row['item']}")
        assert row["score"] == pytest.approx(float(cond["buy"][tid]), abs=1e-6)
    assert pipe(text, behavior="buy", top_k=5) == buy
    with caplog.at_level(logging.WARNING):
        assert pipe([*history, ("9", "share")], behavior="buy", top_k=5) == buy
    assert "without a known behavior" in caplog.text
    with pytest.raises(ValueError, match="not one this model knows"):
        pipe(history, behavior="share")


def test_masked_model_has_no_behavior_distribution(tmp_path):
    pipe = pipeline("next-behavior", model=str(save_tiny("bert4rec", tmp_path, behaviors=["pv", "buy"])))
    assert len(pipe([("3", "pv")], top_k=3)) == 3
    with pytest.raises(ValueError, match="masked-item model"):
        pipe([("3", "pv")], return_behaviors=True)


# ------------------------------------------------------------------ the trained run directory
@pytest.mark.slow
def test_pipeline_and_predict_on_a_run(tiny_run, capsys):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["behavior_lm"]["filter_seen"] is True and config["behavior_lm"]["task"] == "next-item"
    pipe = pipeline("next-behavior", model=str(tiny_run))
    history = pipe.tokenizer.convert_ids_to_tokens(item_token_ids(pipe.tokenizer)[:3])
    raw = [t[2:] for t in history]
    out = pipe(raw, top_k=10)
    assert len(out) == 10 and not {r["item"] for r in out} & set(raw)   # seen filtered, as trained
    assert main(["predict", str(tiny_run), "--history", " ".join(raw), "--top_k", "4"]) == 0
    table = capsys.readouterr().out
    assert "| rank | item | probability | behavior |" in table
    assert [line.split("|")[2].strip() for line in table.splitlines()[2:]] == [r["item"] for r in out[:4]]
    assert main(["predict", str(tiny_run), "--history", "1", "--behavior", "buy"]) == 2
    assert "not one this model knows" in capsys.readouterr().err


@pytest.mark.slow
def test_push_dry_run_folder_loads_in_a_fresh_process(tiny_run, tmp_path, capsys):
    staged = tmp_path / "upload"
    assert main(["push", str(tiny_run), "--repo-id", "me/tiny", "--dry-run", str(staged)]) == 0
    names = {p.name for p in staged.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "metrics.json", "recipe.yaml", "training_args.json", "training_curves.png"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    from huggingface_hub import ModelCard

    card = ModelCard.load(staged / "README.md")
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-4)
    assert card.data.library_name == "transformers" and "behavior-lm" in card.data.tags
    for needle in ("## Evaluation protocol", "full catalogue", "filtered from the ranking",
                   "pessimistic", "research use only", "k-core", 'pipeline("next-behavior", model="me/tiny")',
                   "| popularity (floor) |", "| learning_rate |"):
        assert needle in card.text, needle
    script = ("import sys, behavior_lm\n"
              "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n"
              "p = sys.argv[1]\n"
              "AutoModelForCausalLM.from_pretrained(p); AutoTokenizer.from_pretrained(p)\n"
              "print(len(pipeline('next-behavior', model=p)(['1'], top_k=3)))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(staged)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("3")
    # the real upload without a Hub: one clear line, exit 2, the run untouched
    before = sorted(p.name for p in tiny_run.iterdir())
    assert main(["push", str(tiny_run), "--repo-id", "me/tiny"]) == 2
    assert "push to the Hub as 'me/tiny' failed" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_run.iterdir()) == before


@pytest.mark.slow
def test_report_regenerates_the_plots(tiny_run, capsys):
    (tiny_run / "training_curves.png").unlink()
    assert main(["report", str(tiny_run)]) == 0
    assert (tiny_run / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(tiny_run / "nope")]) == 2


# ------------------------------------------------------------------ evaluate modules
def test_evaluate_modules_equal_the_harness_functions():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(40, 30)).astype(np.float32)   # many ties
    targets = rng.integers(0, 30, size=40)
    exclude = [list(rng.choice(30, size=3, replace=False)) for _ in range(40)]
    got = evaluate.load(metric_path("ranking")).compute(
        predictions=scores.tolist(), references=targets.tolist(), ks=[1, 5, 10], exclude=exclude)
    ranks = []                                              # brute force, ties pessimistic
    for s, t, ex in zip(scores, targets, exclude):
        others = [j for j in range(30) if j != t and j not in ex]
        ranks.append(sum(s[j] >= s[t] for j in others))
    assert got == pytest.approx({**ranking_metrics(np.array(ranks), (1, 5, 10)), "num_examples": 40})

    y, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    cls = evaluate.load(metric_path("classification")).compute(predictions=p.tolist(), references=y.tolist())
    assert cls == pytest.approx({"accuracy": accuracy(y, p), **precision_recall_f1(y, p)})
    yb, sb = rng.integers(0, 2, 50), rng.random(50)
    auc = evaluate.load(metric_path("classification")).compute(
        predictions=(sb > 0.5).astype(int).tolist(), references=yb.tolist(), scores=sb.tolist())["roc_auc"]
    assert auc == pytest.approx(roc_auc(yb, sb))
    t, q = rng.random(30) * 5, rng.random(30) * 5
    reg = evaluate.load(metric_path("regression")).compute(predictions=q.tolist(), references=t.tolist())
    assert reg == pytest.approx({"mae": mae(t, q), "rmse": rmse(t, q)})
    with pytest.raises(ValueError, match="unknown behavior-lm metric"):
        metric_path("bleu")
