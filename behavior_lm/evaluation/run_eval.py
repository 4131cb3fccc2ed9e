"""Re-score a finished run directory with the harness (``behavior-lm evaluate RUN_DIR``).

The run's ``recipe.yaml`` says how its data was prepared, so the same split is rebuilt (from the
cache when present) and checked against the tokenizer saved in the run: a model is never scored
against a different vocabulary.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          AutoTokenizer)

from behavior_lm.data.cold_start import cold_start_subsets, cold_token_ids
from behavior_lm.data.pipeline import prepare_data
from behavior_lm.errors import RecipeError
from behavior_lm.evaluation.fusion import BehaviorEnsembleConfig, BehaviorEnsembleModel
from behavior_lm.evaluation.harness import evaluate_baselines, evaluate_model
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.tasks import get_task
from behavior_lm.evaluation.task_metrics import floor_metrics, score_predictions
from behavior_lm.models.auto import MASKED_MODEL_TYPES
from behavior_lm.models.pretrained import is_adapter_run, load_pretrained_classifier, text_rows_for_run
from behavior_lm.data.collators import IGNORE_INDEX, BehaviorCollator
from behavior_lm.arguments import DataArguments, ModelArguments


def evaluate_run(run_dir: str | Path, *, split: str = "test", batch_size: int = 256,
                 filter_seen: bool | None = None) -> tuple[dict[str, dict], EvalProtocol]:
    run = Path(run_dir)
    for name in ("recipe.yaml", "metrics.json", "config.json"):
        if not (run / name).is_file():
            raise RecipeError(f"{run}: not a finished run directory (no {name})")
    if (run / "update.json").is_file():
        raise RecipeError(f"{run}: was continued on new events (behavior-lm update); its split is no longer "
                          "the recipe's, so it is not re-scored here: its held-out scores are in "
                          "metrics.json['update'] (before and after)")
    data_args = DataArguments.of_run(run)
    saved = json.loads((run / "metrics.json").read_text())
    protocol = EvalProtocol.from_dict(saved["protocol"])
    if filter_seen is not None:
        protocol = dataclasses.replace(protocol, filter_seen=filter_seen)

    tokenizer = AutoTokenizer.from_pretrained(run)
    model_type = saved.get("model_type", "gpt2")
    task = saved.get("task", "next-item")
    kind = get_task(task)
    data = prepare_data(data_args, template=kind.template(model_type))
    if model_type == "pretrained" and kind.ranking:
        return _evaluate_text_ranker_run(run, saved, data, tokenizer, protocol, split, batch_size), protocol
    if model_type == "pretrained":           # the same examples as text, as training wrote them
        text_dsd, text_tok, now = text_rows_for_run(data.datasets, data.tokenizer, ModelArguments.of_run(run),
                                                    data_args.dataset)
        then = saved.get("model", {}).get("text_serialization", {})
        if then.get("sha256") and then["sha256"] != now["sha256"]:
            raise RecipeError(f"{run}: the item table {now['source']} is not the one the run was trained "
                              "with (sha256 differs), so its histories would read differently")
        if text_tok.get_vocab() != tokenizer.get_vocab():
            raise RecipeError(f"{run}: the pretrained model's tokenizer differs from the run's")
        return _evaluate_task_run(run, task, model_type, data, split, batch_size, data_args.intent_behavior,
                                  model_data=dataclasses.replace(data, datasets=text_dsd, tokenizer=text_tok)), protocol
    if saved.get("model", {}).get("semantic_ids"):
        return _evaluate_semantic_run(run, saved, data, tokenizer, protocol, split, batch_size), protocol
    if data.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise RecipeError(f"{run}: the data prepared from recipe.yaml has a different vocabulary "
                          "than the saved tokenizer (did the dataset file change?)")
    if not kind.ranking:
        return _evaluate_task_run(run, task, model_type, data, split, batch_size,
                                  data_args.intent_behavior), protocol
    if model_type == "ensemble":
        model = BehaviorEnsembleModel.from_pretrained(run)
    else:
        auto = AutoModelForMaskedLM if model_type in MASKED_MODEL_TYPES else AutoModelForCausalLM
        model = auto.from_pretrained(run)
    dataset = data.datasets[split]
    name = saved.get("model_type", "model")
    floors = saved.get("baselines", {}).get("test", {}).keys() or ["popularity"]
    results = {name: evaluate_model(model, dataset, tokenizer, protocol, batch_size=batch_size)}
    for floor, m in evaluate_baselines(floors, data.datasets["train"], dataset, tokenizer, protocol,
                                       batch_size=batch_size).items():
        results[f"{floor} (floor)"] = m
    if split == "test":                       # the cold-start protocol: also by warm / cold target
        for part, rows in cold_start_subsets(dataset, cold_token_ids(tokenizer, data.info)).items():
            results[f"{name}, {part.removeprefix('test_')} targets"] = evaluate_model(
                model, rows, tokenizer, protocol, batch_size=batch_size)
    return results, protocol


def _evaluate_semantic_run(run: Path, saved: dict, data, tokenizer, protocol: EvalProtocol, split: str,
                          batch_size: int) -> dict[str, dict]:
    """A semantic-id run: the split's id rows in the run's saved codes, ranked by constrained beam
    search (:mod:`behavior_lm.evaluation.generative`); the floors on the id rows."""
    from behavior_lm.data.semantic_rows import code_rows
    from behavior_lm.evaluation.generative import GenerativeRanker, evaluate_generative
    from behavior_lm.tokenization.behavior_tokenizer import catalogue
    from behavior_lm.tokenization.semantic_ids import CodeTrie, SemanticIds

    sids = SemanticIds.load(run)
    if catalogue(data.tokenizer) != sids.items:
        raise RecipeError(f"{run}: the data prepared from recipe.yaml has a different catalogue than the "
                          "run's semantic_ids.json (did the dataset file change?)")
    rows = code_rows(data.datasets, data.tokenizer, sids, tokenizer)[split]
    model = AutoModelForCausalLM.from_pretrained(run)
    record = saved["model"]["semantic_ids"]
    ranker = GenerativeRanker(CodeTrie(sids, tokenizer.get_vocab()), record["beams"], tokenizer.pad_token_id,
                              protocol.filter_seen)
    name = saved.get("model_type", "model") + " (semantic ids)"
    results = {name: evaluate_generative(model, rows, ranker, protocol.ks, batch_size=batch_size)}
    floors = saved.get("baselines", {}).get("test", {}).keys() or ["popularity"]
    for floor, m in evaluate_baselines(floors, data.datasets["train"], data.datasets[split], data.tokenizer,
                                       protocol, batch_size=batch_size).items():
        results[f"{floor} (floor)"] = m
    return results


def _evaluate_text_ranker_run(run: Path, saved: dict, data, tokenizer, protocol: EvalProtocol, split: str,
                              batch_size: int) -> dict[str, dict]:
    """A pretrained LM ranking items by their text (``models/text_ranker.py``): the split's id rows
    written as text as training wrote them, the whole catalogue ranked; the floors on the id rows."""
    from behavior_lm.data.text_histories import next_item_text_datasets
    from behavior_lm.evaluation.harness import rank_logits
    from behavior_lm.tokenization.behavior_tokenizer import catalogue
    from behavior_lm.models.text_ranker import load_text_ranker, ranker_catalogue, ranker_texts

    items, _ = ranker_catalogue(run)
    if catalogue(data.tokenizer) != items:
        raise RecipeError(f"{run}: the data prepared from recipe.yaml has a different catalogue than the run's "
                          "ranker_items.safetensors (did the dataset file change?)")
    record = saved["model"]["text_serialization"]
    rows, _ = next_item_text_datasets(data.datasets, data.tokenizer, ranker_texts(run), tokenizer, items,
                                      record["max_length"], record["verb"], record["examples_per_window"])
    model = load_text_ranker(run)
    results = {saved.get("model_type", "pretrained"): rank_logits(model, rows[split], protocol,
                                                                  tokenizer.pad_token_id, len(items), batch_size)}
    floors = saved.get("baselines", {}).get("test", {}).keys() or ["popularity"]
    for floor, m in evaluate_baselines(floors, data.datasets["train"], data.datasets[split], data.tokenizer,
                                       protocol, batch_size=batch_size).items():
        results[f"{floor} (floor)"] = m
    return results


def task_logits(model, data, split: str, task: str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs and labels of a classification / regression / token-labelling model on a split
    (token tasks padded to ``max_length`` so batches concatenate)."""
    dataset = data.datasets[split]
    collate = BehaviorCollator(data.tokenizer.pad_token_id)
    logits, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset.with_format(None), batch_size=batch_size, collate_fn=collate):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            width = batch["input_ids"].size(1)
            if get_task(task).token_level:
                pad = data.tokenizer.model_max_length - width
                out = torch.nn.functional.pad(out, (0, 0, 0, max(pad, 0)))
                batch["labels"] = torch.nn.functional.pad(batch["labels"], (0, max(pad, 0)), value=IGNORE_INDEX)
            logits.append(out.numpy())
            labels.append(batch["labels"].numpy())
    return np.concatenate(logits), np.concatenate(labels)


def load_task_model(run: Path, task: str):
    if is_adapter_run(run) or json.loads((run / "metrics.json").read_text()).get("model_type") == "pretrained":
        return load_pretrained_classifier(run)
    if json.loads((run / "config.json").read_text()).get("model_type") == BehaviorEnsembleConfig.model_type:
        return BehaviorEnsembleModel.from_pretrained(run)
    auto = AutoModelForTokenClassification if get_task(task).token_level else AutoModelForSequenceClassification
    return auto.from_pretrained(run).eval()


def _evaluate_task_run(run: Path, task: str, model_type: str, data, split: str,
                       batch_size: int, intent_behavior: str = "buy", model_data=None) -> dict[str, dict]:
    """Classification / regression / token-labelling runs: the model's logits, the task metrics
    (``model_data``: the rows the model reads when they differ from the floors', e.g. text)."""
    logits, labels = task_logits(load_task_model(run, task), model_data or data, split, task, batch_size)
    num_classes = len(data.info["class_names"])
    results = {model_type: score_predictions(task, logits, labels, num_classes)}
    dataset = data.datasets[split]
    for name, m in floor_metrics(task, data.datasets["train"], dataset, num_classes, data.tokenizer,
                                 intent_behavior).items():
        results[f"{name} (floor)"] = m
    return results
