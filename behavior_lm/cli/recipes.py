"""Recipes: flat YAML whose keys are exactly the fields of the argument dataclasses.

Command-line flags (``--key value``) override YAML values. Unknown keys are an error that names
the recipe file and the line of the key, not a silently ignored typo.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from behavior_lm.errors import RecipeError
from behavior_lm.training.arguments import BehaviorTrainingArguments, DataArguments, ModelArguments

ARGUMENT_CLASSES = (DataArguments, ModelArguments, BehaviorTrainingArguments)


def known_keys() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe; check that it is a flat mapping of known keys."""
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
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if node is not None else {}
    keys = known_keys()
    for key, value in data.items():
        if key not in keys:
            close = sorted(k for k in keys if k.split("_")[0] == str(key).split("_")[0])[:5]
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise RecipeError(f"{path}:{lines.get(key, '?')}: unknown key '{key}'{hint}")
        if isinstance(value, dict) and key not in ("lr_scheduler_kwargs", "optim_args"):
            raise RecipeError(f"{path}:{lines.get(key, '?')}: key '{key}' must be a plain value, "
                              "recipes are flat")
    return data


def _to_argv(recipe: dict[str, Any]) -> list[str]:
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
    for flag in overrides:
        if flag.startswith("--") and flag[2:].split("=")[0] not in known_keys():
            raise RecipeError(f"unknown option '{flag}' (not a field of the recipe dataclasses)")
    try:
        data_args, model_args, training_args, rest = parser.parse_args_into_dataclasses(
            args=_to_argv(recipe) + list(overrides), return_remaining_strings=True)
    except SystemExit as exc:  # argparse reports bad values by exiting; turn it into one line
        raise RecipeError(f"{path or 'command line'}: invalid value in recipe or flags "
                          "(see the message above)") from exc
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{path or 'command line'}: {exc}") from exc
    if rest:
        raise RecipeError(f"unexpected arguments: {' '.join(rest)}")
    return data_args, model_args, training_args, recipe
