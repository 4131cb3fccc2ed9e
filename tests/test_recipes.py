"""Recipes: every shipped recipe parses and builds; unknown keys and bad values are errors."""
from __future__ import annotations

import enum

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from behavior_lm.training.recipes import load_recipe, parse_recipe
from behavior_lm.errors import RecipeError
from behavior_lm.models.auto import build_model
from behavior_lm.tasks import get_task, template_for
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    names = {p.relative_to(p.parents[1]).as_posix() for p in RECIPES}
    assert {"quickstart/gpt2-ml-100k.yaml", "next-item/gpt2-ml-1m.yaml",
            "next-item/gpt2-beauty.yaml", "next-class/bert-ml-100k.yaml",
            "next-rating/gru-ml-100k.yaml", "event-class/bert-ml-100k.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_recipe_parses_and_builds_tiny(recipe):
    data_args, model_args, training_args, raw = parse_recipe(
        recipe, ["--hidden_size", "8", "--num_layers", "1", "--num_heads", "1"])
    for key, value in raw.items():  # every YAML value reached its dataclass field
        if key not in ("hidden_size", "num_layers", "num_heads"):
            got = next(getattr(a, key) for a in (data_args, model_args, training_args) if hasattr(a, key))
            if isinstance(got, enum.Enum):                 # TrainingArguments turn strings into enums
                got = got.value
            assert got == value, (key, got, value)
    task = data_args.task
    template = template_for(model_args.model_type, task)
    tok = build_tokenizer([str(i) for i in range(20)], template=template, max_length=data_args.max_length)
    if model_args.model_type == "pretrained" and task == "next-item":    # a text ranker over 20 items
        from behavior_lm.models.text_encoder import resolve_encoder
        from behavior_lm.models.text_ranker import TextRankerModel, with_lora

        model = TextRankerModel.from_encoder(resolve_encoder(model_args.pretrained_model), torch.randn(20, 384))
        if model_args.lora_r:
            model = with_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                              model_args.lora_target_modules)
        text = AutoTokenizer.from_pretrained(resolve_encoder(model_args.pretrained_model))
        assert model(**text(["watched: Heat (1995)"], return_tensors="pt")).logits.shape == (1, 20)
        assert training_args.metric_for_best_model == "ndcg@10"
        return
    if model_args.semantic_ids:                       # codes of 20 items: the model reads code tokens
        from behavior_lm.data.semantic_rows import code_tokenizer
        from behavior_lm.tokenization.semantic_ids import SemanticIds, residual_kmeans

        sids = SemanticIds.from_clusters([str(i) for i in range(20)], residual_kmeans(
            torch.randn(20, 8), model_args.semantic_id_levels, model_args.semantic_id_codebook_size), 256)
        tok = code_tokenizer(sids, template, data_args.max_length)
        model = build_model(model_args, tok, sids.positions(data_args.max_length))
        ids = torch.tensor([tok(" ".join(sids.expand(["i:3", "i:4"])))["input_ids"]])
        assert model(input_ids=ids).logits.shape == (1, 1 + 2 * sids.code_length, len(tok))
        assert max(training_args.eval_ks) <= model_args.semantic_id_beams
        return
    model = get_task(task).build_model(model_args, tok, data_args.max_length, num_labels=2)
    if model_args.model_type == "pretrained":           # reads text with the checkpoint's own tokenizer
        from behavior_lm.models.pretrained import text_tokenizer
        tok = text_tokenizer(model_args)
        assert len(tok) >= 30000 and (model_args.lora_r == 0) == (not hasattr(model, "peft_config"))
    assert model.config.vocab_size == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    ids = torch.tensor([tok("i:3 i:4")["input_ids"]])
    logits = model(input_ids=ids).logits
    if task == "next-item":
        assert training_args.metric_for_best_model == "ndcg@10"
        assert logits.shape == (1, ids.size(1), len(tok))
    elif get_task(task).token_level:
        assert logits.shape == (1, ids.size(1), 2)
    else:
        assert logits.shape == (1, 1 if task == "next-rating" else 2)


def test_flags_override_yaml(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("dataset: ml-100k\nlearning_rate: 0.01\neval_ks: [5, 10]\nfilter_seen: false\n")
    d, m, t, _ = parse_recipe(r, ["--learning_rate", "0.5", "--hidden_size", "16"])
    assert (t.learning_rate, m.hidden_size, t.eval_ks, t.filter_seen) == (0.5, 16, [5, 10], False)


def test_unknown_yaml_key_names_file_and_line(tmp_path):
    r = tmp_path / "bad.yaml"
    r.write_text("dataset: ml-100k\n# comment\nlearnin_rate: 0.01\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:3: unknown key 'learnin_rate'"):
        load_recipe(r)


def test_unknown_flag_and_bad_value(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("dataset: ml-100k\n")
    with pytest.raises(RecipeError, match="unknown option '--no_such_thing'"):
        parse_recipe(r, ["--no_such_thing", "1"])
    with pytest.raises(RecipeError, match="flag --learning_rate: invalid float value"):
        parse_recipe(r, ["--learning_rate", "fast"])


def test_nested_and_invalid_yaml(tmp_path):
    r = tmp_path / "nested.yaml"
    r.write_text("dataset:\n  name: ml-100k\n")
    with pytest.raises(RecipeError, match=r"nested\.yaml:1: key 'dataset' must be a plain value"):
        load_recipe(r)
    r.write_text("dataset: [unclosed\n")
    with pytest.raises(RecipeError, match=r"nested\.yaml:\d+: not valid YAML"):
        load_recipe(r)
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_recipe_schema_file_matches_the_dataclasses():
    """``behavior_lm/recipe_schema.json`` (what the console script checks recipes against before
    importing torch) is what the argument dataclasses say. With the transformers version it was
    generated with every key must agree; with another, our own fields must (TrainingArguments'
    may differ, and unknown keys are then left to the full parse)."""
    import dataclasses
    import json

    import transformers
    from transformers import TrainingArguments

    from behavior_lm.arguments import BehaviorTrainingArguments, DataArguments, ModelArguments
    from behavior_lm.recipe_file import SCHEMA_FILE
    from behavior_lm.training.recipes import recipe_schema

    stored, fresh = json.loads(SCHEMA_FILE.read_text()), recipe_schema()
    hint = "stale: run python -m behavior_lm.training.recipes --write-schema"
    if stored["transformers"] == transformers.__version__:
        assert stored == fresh, hint
    else:
        inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
        own = {f.name for c in (DataArguments, ModelArguments, BehaviorTrainingArguments)
               for f in dataclasses.fields(c)} - inherited
        assert {k: stored["keys"].get(k) for k in own} == {k: fresh["keys"][k] for k in own}, hint


def test_training_fields_are_read_from_the_installed_source():
    """The cheap check reads the installed ``TrainingArguments`` fields from its source (no import),
    so a newer transformers than the schema was written with still gets typos refused early."""
    import dataclasses

    from transformers import TrainingArguments

    from behavior_lm.recipe_file import installed_training_fields

    assert installed_training_fields() == {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


@pytest.fixture
def schema_from_another_transformers(monkeypatch):
    """The schema file as if written with another transformers release than the installed one."""
    import json

    from behavior_lm import recipe_file

    stored = json.loads(recipe_file.SCHEMA_FILE.read_text())
    stored["transformers"] = "0.0.0"
    stored["keys"].pop("torch_compile")                 # as if added by the newer release
    caches = (recipe_file._same_transformers, recipe_file.schema_is_complete, recipe_file.installed_training_fields)
    for cached in caches:
        cached.cache_clear()
    monkeypatch.setattr(recipe_file, "_schema_file", lambda: stored)
    yield recipe_file
    for cached in caches:
        cached.cache_clear()


def test_typos_are_refused_under_another_transformers(tmp_path, schema_from_another_transformers, monkeypatch):
    """CI once installed a transformers release newer than the schema's and the cheap check waved
    every unknown key through to a worse error after the heavy imports."""
    recipe_file = schema_from_another_transformers
    r = tmp_path / "bad.yaml"
    r.write_text("dataset: ml-100k\ntorch_compile: false\nhiden_size: 4\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:3: unknown key 'hiden_size' \(did you mean: hidden_size\?\)"):
        load_recipe(r)
    with pytest.raises(RecipeError, match="unknown option '--hiden_size'"):
        recipe_file.check_flags(["--torch_compile", "true", "--hiden_size", "4"])
    # the source cannot be read either: the full parse refuses with the same words
    monkeypatch.setattr(recipe_file, "installed_training_fields", lambda: None)
    recipe_file.schema_is_complete.cache_clear()
    assert load_recipe(r)["hiden_size"] == 4
    with pytest.raises(RecipeError, match=r"bad\.yaml:3: unknown key 'hiden_size' \(did you mean: hidden_size\?\)"):
        parse_recipe(r)
    r.write_text("dataset: ml-100k\n")
    with pytest.raises(RecipeError, match="unknown option '--hiden_size'"):
        parse_recipe(r, ["--hiden_size", "4"])


def test_fields_moved_elsewhere_are_not_trusted(tmp_path, schema_from_another_transformers):
    """A release whose source no longer lists most of the recorded fields (moved to a base class,
    say) must not make the cheap check refuse real keys: it steps aside for the full parse."""
    recipe_file = schema_from_another_transformers
    recipe_file._schema_file()["training_arguments"] += [f"moved_field_{i}" for i in range(100)]
    assert recipe_file.installed_training_fields() is None and not recipe_file.schema_is_complete()
    r = tmp_path / "r.yaml"
    r.write_text("dataset: ml-100k\ntorch_compile: true\n")       # real, but not in this schema's keys
    assert load_recipe(r)["torch_compile"] is True


def test_cheap_and_full_checks_share_one_range_table(tmp_path):
    """A range broken in the YAML is refused by the cheap check (no torch) and, given as a
    dataclass value, by the full one, with the same words."""
    from behavior_lm.recipe_file import RANGES, check_ranges

    for key, (what, ok) in RANGES.items():
        bad = 0 if not ok(0) else (-1 if not ok(-1) else 1.5)
        r = tmp_path / f"{key}.yaml"
        r.write_text(f"dataset: ml-100k\n{key}: {bad}\n")
        with pytest.raises(RecipeError, match=rf"{key}.yaml:2: key '{key}' must be {__import__('re').escape(what)}"):
            check_ranges(load_recipe(r), r)
        if key in ("intent_seconds",) or not isinstance(bad, int) and key.startswith(("hidden", "num_")):
            continue
        with pytest.raises(RecipeError, match=rf"key '{key}' must be {__import__('re').escape(what)}"):
            parse_recipe(r)


def test_validation_subset_is_the_same_users_whatever_the_seed():
    """Runs that differ only in seed validate on the same users (the subset used to follow the seed)."""
    from datasets import Dataset
    from transformers import set_seed

    from behavior_lm.training.run import validation_subset

    rows = Dataset.from_dict({"user": list(range(500))})
    set_seed(1)
    first = validation_subset(rows, 100)["user"]
    set_seed(2)
    assert validation_subset(rows, 100)["user"] == first
    assert len(set(first)) == 100 and first != list(range(100))       # a random subset, not the head
    assert validation_subset(rows, None).num_rows == 500 and validation_subset(rows, 600).num_rows == 500
