"""Recipes: flat YAML whose keys are exactly the fields of the argument dataclasses.

Command-line flags (``--key value``) override YAML values. Unknown keys are an error that names
the recipe file and the line of the key, not a silently ignored typo.
"""
from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from behavior_lm.errors import RecipeError
from behavior_lm.arguments import BehaviorTrainingArguments, DataArguments, ModelArguments

ARGUMENT_CLASSES = (DataArguments, ModelArguments, BehaviorTrainingArguments)


def known_keys() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}


def _field_types() -> dict[str, Any]:
    import typing

    out: dict[str, Any] = {}
    for cls in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                out[f.name] = hints.get(f.name, f.type)
    return out


def _accepts(kind: Any, value: Any) -> str | None:
    """``None`` when ``value`` fits the field type ``kind``, else what the key expects."""
    import typing

    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        wants = [_accepts(a, value) for a in options]
        return None if any(w is None for w in wants) else " or ".join(w for w in wants if w)
    if origin is list:
        if not isinstance(value, list):
            return "a list"
        inner = args[0] if args else Any
        bad = [v for v in value if _accepts(inner, v) is not None]
        return f"a list whose items are each {_accepts(inner, bad[0])}" if bad else None
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    if kind is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if kind is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if kind is str:
        return None if isinstance(value, str) else "a string"
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        names = [m.value for m in kind]
        return None if value in names else f"one of {names}"
    return None                         # dicts, unions of enums and strings, ...: argparse decides


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe; check that it is a flat mapping of known keys with values of the right type,
    each key once. Errors name the file, the line and the key."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a flat mapping of argument names to values")
    lines: dict[Any, int] = {}
    for k, _ in (node.value if node is not None else []):
        if k.value in lines:
            raise RecipeError(f"{path}:{k.start_mark.line + 1}: key '{k.value}' is given twice "
                              f"(first on line {lines[k.value]}); a recipe sets each key once")
        lines[k.value] = k.start_mark.line + 1
    keys = known_keys()
    types = _field_types()
    for key, value in data.items():
        if key not in keys:
            close = sorted(k for k in keys if k.split("_")[0] == str(key).split("_")[0])[:5]
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise RecipeError(f"{path}:{lines.get(key, '?')}: unknown key '{key}'{hint}")
        if isinstance(value, dict) and key not in ("lr_scheduler_kwargs", "optim_args"):
            raise RecipeError(f"{path}:{lines.get(key, '?')}: key '{key}' must be a plain value, "
                              "recipes are flat")
        wants = None if isinstance(value, dict) else _accepts(types[key], value)
        if wants:
            raise RecipeError(f"{path}:{lines.get(key, '?')}: key '{key}' must be {wants}, got {value!r}")
    RECIPE_LINES[str(path)] = lines
    return data


RECIPE_LINES: dict[str, dict[Any, int]] = {}   # path -> key -> line, for errors found after parsing


def to_argv(recipe: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in recipe.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append("true" if value else "false")
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> tuple[
        DataArguments, ModelArguments, BehaviorTrainingArguments, dict[str, Any]]:
    """YAML recipe + ``--key value`` overrides -> the three argument dataclasses (+ the raw recipe)."""
    recipe = load_recipe(path) if path else {}
    parser = HfArgumentParser(ARGUMENT_CLASSES)

    def error(message: str):  # argparse would print the whole usage (150 lines) and exit
        import re

        flag = re.search(r"argument (--[A-Za-z0-9_]+)", message)
        if flag and flag.group(1) in overrides:
            raise RecipeError(f"flag {flag.group(1)}: {message.split(': ', 1)[-1]}")
        key = flag.group(1)[2:] if flag else None
        lines = RECIPE_LINES.get(str(path), {})
        where = f"{path}:{lines[key]}: key '{key}'" if key in lines else f"{path or 'command line'}"
        raise RecipeError(f"{where}: {message.split(': ', 1)[-1] if key in lines else message}")

    parser.error = error
    for flag in overrides:
        if flag.startswith("--") and flag[2:].split("=")[0] not in known_keys():
            raise RecipeError(f"unknown option '{flag}' (not a field of the recipe dataclasses)")
    try:
        data_args, model_args, training_args, rest = parser.parse_args_into_dataclasses(
            args=to_argv(recipe) + list(overrides), return_remaining_strings=True)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{path or 'command line'}: {exc}") from exc
    if rest:
        raise RecipeError(f"{path or 'command line'}: unexpected arguments: {' '.join(rest)} "
                          "(flags are --key value; a list value is --key v1 v2)")
    check_values(data_args, model_args, training_args, where=_locator(path, overrides))
    # the recipe as run: the file's keys and every overridden key with its parsed value, so the
    # run's recipe.yaml reproduces it (`behavior-lm train runs/x/recipe.yaml`)
    effective = dict(recipe)
    flagged = [f[2:].split("=")[0] for f in overrides if f.startswith("--")]
    for key in flagged:
        for args in (data_args, model_args, training_args):
            if key in {f.name for f in dataclasses.fields(args)}:
                value = getattr(args, key)
                if isinstance(value, list) and not value:       # e.g. --report_to none -> []
                    at = next(i for i, f in enumerate(overrides) if f.split("=")[0] == f"--{key}")
                    value = overrides[at].split("=", 1)[1] if "=" in overrides[at] else overrides[at + 1]
                effective[key] = value.value if isinstance(value, enum.Enum) else value
                break
    return data_args, model_args, training_args, effective


def _locator(path: str | Path | None, overrides: Sequence[str]):
    """``where("hidden_size")`` -> "recipe.yaml:11: key 'hidden_size'" or "flag --hidden_size"."""
    lines = RECIPE_LINES.get(str(path), {}) if path else {}

    def where(key: str) -> str:
        if any(f == f"--{key}" or f.startswith(f"--{key}=") for f in overrides):
            return f"flag --{key}"
        if key in lines:
            return f"{path}:{lines[key]}: key '{key}'"
        return f"{path or 'command line'}: key '{key}' (default)"

    return where


def check_values(data_args: DataArguments, model_args: ModelArguments,
                 training_args: BehaviorTrainingArguments, where=lambda key: f"key '{key}'") -> None:
    """Ranges and choices, before any data is read: one line naming the key, not a traceback
    from deep inside a model constructor."""
    from behavior_lm.data.streams import TRAIN_WINDOWS
    from behavior_lm.models.auto import CLASSIFIER_MODEL_TYPES, MODEL_TYPES
    from behavior_lm.models.output_prior import OUTPUT_BIAS_INITS
    from behavior_lm.training.sampled_softmax import PROPOSALS, SAMPLED_MODEL_TYPES, SOFTMAXES
    from behavior_lm.tasks import get_task, task_names

    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise RecipeError(f"{where(key)} must be {what}, got {value!r}")

    choices = {"task": (data_args.task, task_names()), "split": (data_args.split, ("leave_one_out", "temporal")),
               "train_windows": (data_args.train_windows, TRAIN_WINDOWS),
               "model_type": (model_args.model_type, tuple(dict.fromkeys(MODEL_TYPES + CLASSIFIER_MODEL_TYPES))),
               "cloze_loss": (training_args.cloze_loss, ("items", "vocabulary")),
               "output_bias_init": (model_args.output_bias_init, OUTPUT_BIAS_INITS),
               "softmax": (training_args.softmax, SOFTMAXES),
               "negative_sampling": (training_args.negative_sampling, PROPOSALS)}
    for key, (value, allowed) in choices.items():
        need(value in allowed, key, f"one of {', '.join(allowed)}", value)
    task = get_task(data_args.task)
    if training_args.softmax == "sampled":
        need(training_args.num_negatives >= 1, "num_negatives", "a positive integer", training_args.num_negatives)
        need(task.ranking and model_args.model_type in SAMPLED_MODEL_TYPES and not model_args.semantic_ids,
             "softmax", f"'full' here: 'sampled' is for next-item ranking with model_type "
             f"{', '.join(SAMPLED_MODEL_TYPES)} on item ids (got model_type {model_args.model_type}, task "
             f"{task.name}{', semantic_ids' if model_args.semantic_ids else ''})", training_args.softmax)
    need(model_args.model_type in task.model_types, "model_type",
         f"one of {', '.join(task.model_types)} for task {task.name}", model_args.model_type)
    for key, value in (("hidden_size", model_args.hidden_size), ("num_layers", model_args.num_layers),
                       ("num_heads", model_args.num_heads), ("max_length", data_args.max_length),
                       ("per_device_train_batch_size", training_args.per_device_train_batch_size),
                       ("per_device_eval_batch_size", training_args.per_device_eval_batch_size),
                       ("intent_horizon", data_args.intent_horizon),
                       ("examples_per_user", data_args.examples_per_user)):
        need(value >= 1, key, "a positive integer", value)
    if model_args.intermediate_size is not None:
        need(model_args.intermediate_size >= 1, "intermediate_size", "a positive integer", model_args.intermediate_size)
    if model_args.model_type not in ("gru", "lstm"):
        need(model_args.hidden_size % model_args.num_heads == 0, "num_heads",
             f"a divisor of hidden_size ({model_args.hidden_size})", model_args.num_heads)
    for key, value in (("dropout", model_args.dropout), ("attention_dropout", model_args.attention_dropout)):
        if value is not None:
            need(0.0 <= value < 1.0, key, "in [0, 1)", value)
    need(0.0 < model_args.mask_probability <= 1.0, "mask_probability", "in (0, 1]", model_args.mask_probability)
    need(model_args.initializer_range > 0, "initializer_range", "positive", model_args.initializer_range)
    need(training_args.learning_rate > 0, "learning_rate", "positive", training_args.learning_rate)
    need(training_args.num_train_epochs > 0 or training_args.max_steps > 0, "num_train_epochs", "positive",
         training_args.num_train_epochs)
    need(all(k >= 1 for k in training_args.eval_ks) and bool(training_args.eval_ks), "eval_ks",
         "positive integers", training_args.eval_ks)
    for key, value in (("valid_fraction", data_args.valid_fraction), ("test_fraction", data_args.test_fraction)):
        need(0.0 < value < 1.0, key, "in (0, 1)", value)
    need(training_args.eval_item_chunk >= 0, "eval_item_chunk", "0 or more", training_args.eval_item_chunk)
    for key in ("min_user_events", "min_item_events"):
        need(getattr(data_args, key) >= 0, key, "0 or more", getattr(data_args, key))
    for key in ("max_history", "max_users", "max_eval_users", "session_gap", "intent_seconds"):
        value = getattr(data_args, key, getattr(training_args, key, None))
        if value is not None:
            need(value >= 1, key, "a positive integer", value)
