"""behavior-lm: user-behavior logs as token streams for Hugging Face models.

The public API, one function per arrow of the flow (see docs/design.md)::

    log = read_events("u.data")                      # any supported file -> EventLog
    data = prepare_data(DataArguments(dataset="ml-100k"))   # -> tokenizer + DatasetDict (cached)
    run_dir = train(data_args, model_args, training_args)   # Trainer -> run directory

``import behavior_lm`` registers our model classes with the Auto classes, the tasks, and
``pipeline("next-behavior")`` (:func:`register`). The ``behavior-lm`` command defers that (and
with it torch and transformers) until its recipe and inputs have passed their cheap checks, so a
typo fails in well under a second; see ``behavior_lm_cli``.
"""
from __future__ import annotations

import importlib
import os

from behavior_lm.version import __version__
from behavior_lm.errors import BehaviorLMError, DataError, RecipeError
from behavior_lm.registry import register

DEFER_ENV = "BEHAVIOR_LM_DEFER_REGISTRATION"   # set only while behavior_lm_cli imports the package

_API = {
    "EventLog": "behavior_lm.data.events", "PreparedData": "behavior_lm.data.pipeline",
    "prepare_data": "behavior_lm.data.pipeline", "read_events": "behavior_lm.data.readers",
    "load_events": "behavior_lm.data.sources", "NextBehaviorPipeline": "behavior_lm.inference.pipelines",
    "rank_of_target": "behavior_lm.evaluation.metrics", "ranking_metrics": "behavior_lm.evaluation.metrics",
    "EvalProtocol": "behavior_lm.evaluation.protocol", "build_tokenizer": "behavior_lm.tokenization.behavior_tokenizer",
    "BehaviorTrainingArguments": "behavior_lm.arguments", "DataArguments": "behavior_lm.arguments",
    "ModelArguments": "behavior_lm.arguments", "train": "behavior_lm.training.run",
}

def __getattr__(name: str):
    if name in _API:
        register()
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'behavior_lm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


__all__ = [
    "BehaviorLMError", "BehaviorTrainingArguments", "DataArguments", "DataError", "EvalProtocol",
    "EventLog", "ModelArguments", "NextBehaviorPipeline", "PreparedData", "RecipeError", "build_tokenizer", "load_events",
    "prepare_data", "rank_of_target", "ranking_metrics", "read_events", "register", "train", "__version__",
]

if os.environ.get(DEFER_ENV) != "1":
    register()
