"""Read and check a recipe file without importing torch, transformers or datasets.

A recipe is a flat YAML mapping whose keys are the fields of the three argument dataclasses
(``DataArguments``, ``ModelArguments``, ``BehaviorTrainingArguments``). Those classes subclass
``transformers.TrainingArguments``, whose import costs 5-7 s on this machine; a typo in a recipe
should fail in well under a second. So the keys and their types are also written to
``recipe_schema.json`` next to this module, generated from the dataclasses by
:func:`behavior_lm.training.recipes.recipe_schema` (``python -m behavior_lm.training.recipes
--write-schema``); ``tests/test_recipes.py`` fails when the file and the classes disagree.

What is checked here (each error one line naming file, line and key): the file exists and is
valid YAML, it is a flat mapping, no key is given twice, every key is known, and every value has
its field's type. Ranges and choices that need the model and task registries are checked after
the heavy imports, still before any data is read (``training.recipes.check_values``).
"""
from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import Any

import yaml

from behavior_lm.errors import RecipeError

SCHEMA_FILE = Path(__file__).with_name("recipe_schema.json")
DICT_KEYS = ("lr_scheduler_kwargs", "optim_args")   # the only keys whose value may be a mapping

RECIPE_LINES: dict[str, dict[Any, int]] = {}   # path -> key -> line, for errors found after parsing


@functools.cache
def _schema_file() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def schema() -> dict[str, Any]:
    """Key -> type spec: ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"none"``, ``"any"``,
    ``{"list": spec}``, ``{"union": [spec, ...]}`` or ``{"enum": [value, ...]}``.

    With another ``transformers`` than the file was generated with, the installed
    ``TrainingArguments`` fields the file lacks are added with type ``"any"`` (the full parse
    checks their values), so that a typo is still refused here and not after the heavy imports."""
    keys = dict(_schema_file()["keys"])
    if not _same_transformers():
        for name in installed_training_fields() or ():
            keys.setdefault(name, "any")
    return keys


@functools.cache
def _same_transformers() -> bool:
    """Whether the installed ``transformers`` is the release the schema file was generated with."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers") == _schema_file()["transformers"]
    except PackageNotFoundError:
        return False


@functools.cache
def installed_training_fields() -> frozenset[str] | None:
    """The field names of the installed ``transformers.TrainingArguments``, read from its source
    with :mod:`ast` (milliseconds) instead of importing it (5-7 s, it imports torch). ``None`` when
    the source cannot be read, holds no such class, or the names found miss more than a tenth of
    the fields the schema's release had (a release that moved them elsewhere: refusing a real key
    would be worse than a late error); unknown keys then go to the full parse."""
    import ast
    import importlib.util

    try:
        spec = importlib.util.find_spec("transformers")    # locates the package, imports nothing
        roots = list(spec.submodule_search_locations or []) if spec else []
        source = next((Path(r) / "training_args.py" for r in roots
                       if (Path(r) / "training_args.py").is_file()), None)
        tree = ast.parse(source.read_text()) if source else None
    except (ImportError, ValueError, OSError, SyntaxError):
        return None
    for node in (tree.body if tree else []):
        if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments":
            names = frozenset(n.target.id for n in node.body
                              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                              and "ClassVar" not in ast.unparse(n.annotation)
                              and "init=False" not in ast.unparse(n.value or ast.Constant(None)))
            recorded = set(_schema_file().get("training_arguments", ()))
            if not names or len(names & recorded) < 0.9 * len(recorded):
                return None
            return names
    return None


@functools.cache
def schema_is_complete() -> bool:
    """Whether :func:`schema` lists every key the installed ``transformers`` accepts: it was
    generated with that version, or the installed ``TrainingArguments`` fields could be read from
    its source. Otherwise a key missing from it is left to the full check instead of being refused."""
    return _same_transformers() or installed_training_fields() is not None


def known_keys() -> set[str]:
    return set(schema())


def accepts(spec: Any, value: Any) -> str | None:
    """``None`` when ``value`` fits ``spec``, else what the key expects (for the error)."""
    if isinstance(spec, dict) and "union" in spec:
        options = [s for s in spec["union"] if s != "none"]
        if value is None and len(options) < len(spec["union"]):
            return None
        wants = [accepts(s, value) for s in options]
        return None if any(w is None for w in wants) else " or ".join(w for w in wants if w)
    if isinstance(spec, dict) and "list" in spec:
        if not isinstance(value, list):
            return "a list"
        bad = [v for v in value if accepts(spec["list"], v) is not None]
        return f"a list whose items are each {accepts(spec['list'], bad[0])}" if bad else None
    if isinstance(spec, dict) and "enum" in spec:
        return None if value in spec["enum"] else f"one of {spec['enum']}"
    if spec == "bool":
        return None if isinstance(value, bool) else "true or false"
    if spec == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if spec == "float":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if spec == "str":
        return None if isinstance(value, str) else "a string"
    return None                         # dicts, unions of enums and strings, ...: argparse decides


def unknown_key(path: str | Path, line: Any, key: str, keys: Any) -> RecipeError:
    """The error for a recipe key that no argument dataclass has, with the closest known keys."""
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75) or sorted(
        k for k in keys if k.split("_")[0] == key.split("_")[0])[:5]
    hint = f" (did you mean: {', '.join(close)}?)" if close else ""
    return RecipeError(f"{path}:{line}: unknown key '{key}'{hint}")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe; check that it is a flat mapping of known keys with values of the right type,
    each key once. Errors name the file, the line and the key."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc})") from None
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
    types = schema()
    for key, value in data.items():
        if key not in types and not schema_is_complete():
            continue                    # a newer TrainingArguments field: the full parse decides
        if key not in types:
            raise unknown_key(path, lines.get(key, "?"), str(key), types)
        if isinstance(value, dict) and key not in DICT_KEYS:
            raise RecipeError(f"{path}:{lines.get(key, '?')}: key '{key}' must be a plain value, "
                              "recipes are flat")
        wants = None if isinstance(value, dict) else accepts(types[key], value)
        if wants:
            raise RecipeError(f"{path}:{lines.get(key, '?')}: key '{key}' must be {wants}, got {value!r}")
    RECIPE_LINES[str(path)] = lines
    return data


# Ranges of plain numeric keys: one table for the cheap check here and the full one after parsing
# (training.recipes.check_values), so they cannot drift apart. None (where a key allows it) passes.
RANGES: dict[str, tuple[str, Any]] = {
    **{k: ("a positive integer", lambda v: v >= 1) for k in (
        "hidden_size", "num_layers", "num_heads", "max_length", "per_device_train_batch_size",
        "per_device_eval_batch_size", "intent_horizon", "examples_per_user", "intermediate_size",
        "max_history", "max_users", "max_eval_users", "session_gap", "intent_seconds", "data_partitions")},
    **{k: ("in [0, 1)", lambda v: 0.0 <= v < 1.0) for k in ("dropout", "attention_dropout")},
    "mask_probability": ("in (0, 1]", lambda v: 0.0 < v <= 1.0),
    "mask_last_probability": ("in [0, 1]", lambda v: 0.0 <= v <= 1.0),
    **{k: ("positive", lambda v: v > 0) for k in ("initializer_range", "learning_rate")},
    **{k: ("in (0, 1)", lambda v: 0.0 < v < 1.0) for k in ("valid_fraction", "test_fraction")},
    **{k: ("0 or more", lambda v: v >= 0) for k in ("eval_item_chunk", "min_user_events", "min_item_events")},
}


def range_error(key: str, value: Any) -> str | None:
    """What ``key`` must be when ``value`` is out of its range (``None`` when it is fine)."""
    rule = RANGES.get(key)
    if rule is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if rule[1](value) else rule[0]


def check_ranges(recipe: dict[str, Any], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> None:
    """The :data:`RANGES` of a loaded recipe's values and of ``--key value`` flags (a flag value
    that is not a number is left to the full parse, which names it)."""
    lines = RECIPE_LINES.get(str(path), {})
    for key, value in recipe.items():
        if (what := range_error(key, value)):
            raise RecipeError(f"{path}:{lines.get(key, '?')}: key '{key}' must be {what}, got {value!r}")
    for i, flag in enumerate(overrides):
        key, _, inline = flag[2:].partition("=") if flag.startswith("--") else ("", "", "")
        if key not in RANGES:
            continue
        text = inline or (overrides[i + 1] if i + 1 < len(overrides) else "")
        try:
            value = float(text)
        except ValueError:
            continue
        if (what := range_error(key, value)):
            raise RecipeError(f"flag --{key} must be {what}, got {text}")


def check_flags(overrides: list[str] | tuple[str, ...]) -> None:
    """``--key value`` overrides name known keys (their values are parsed with the dataclasses)."""
    keys = known_keys()
    for flag in overrides:
        if flag.startswith("--") and flag[2:].split("=")[0] not in keys and schema_is_complete():
            raise RecipeError(f"unknown option '{flag}' (not a field of the recipe dataclasses)")
