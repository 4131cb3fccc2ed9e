"""Re-score a finished run directory with the harness (``behavior-lm evaluate RUN_DIR``).

The run's ``recipe.yaml`` says how its data was prepared, so the same split is rebuilt (from the
cache when present) and checked against the tokenizer saved in the run: a model is never scored
against a different vocabulary.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from behavior_lm.data.pipeline import prepare_data
from behavior_lm.errors import RecipeError
from behavior_lm.evaluation.harness import evaluate_baselines, evaluate_model
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.models.auto import MASKED_MODEL_TYPES, template_for
from behavior_lm.training.arguments import DataArguments


def evaluate_run(run_dir: str | Path, *, split: str = "test", batch_size: int = 256,
                 filter_seen: bool | None = None) -> tuple[dict[str, dict], EvalProtocol]:
    run = Path(run_dir)
    for name in ("recipe.yaml", "metrics.json", "config.json"):
        if not (run / name).is_file():
            raise RecipeError(f"{run}: not a finished run directory (no {name})")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text()) or {}
    fields = {f.name for f in dataclasses.fields(DataArguments)}
    data_args = DataArguments(**{k: v for k, v in recipe.items() if k in fields})
    saved = json.loads((run / "metrics.json").read_text())
    protocol = EvalProtocol.from_dict(saved["protocol"])
    if filter_seen is not None:
        protocol = dataclasses.replace(protocol, filter_seen=filter_seen)

    tokenizer = AutoTokenizer.from_pretrained(run)
    model_type = saved.get("model_type", "gpt2")
    data = prepare_data(data_args, template=template_for(model_type))
    if data.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise RecipeError(f"{run}: the data prepared from recipe.yaml has a different vocabulary "
                          "than the saved tokenizer (did the dataset file change?)")
    auto = AutoModelForMaskedLM if model_type in MASKED_MODEL_TYPES else AutoModelForCausalLM
    model = auto.from_pretrained(run)
    dataset = data.datasets[split]
    results = {saved.get("model_type", "model"): evaluate_model(model, dataset, tokenizer, protocol,
                                                               batch_size=batch_size)}
    for name, m in evaluate_baselines(saved.get("baselines", {}).get("test", {}).keys() or ["popularity"],
                                      data.datasets["train"], dataset, tokenizer, protocol,
                                      batch_size=batch_size).items():
        results[f"{name} (floor)"] = m
    return results, protocol
