"""behavior-lm: user-behavior logs as token streams for Hugging Face models.

The public API, one function per arrow of the flow (see docs/design.md)::

    log = read_events("u.data")                      # any supported file -> EventLog
    data = prepare_data(DataArguments(dataset="ml-100k"))   # -> tokenizer + DatasetDict (cached)
    run_dir = train(data_args, model_args, training_args)   # Trainer -> run directory
"""
from __future__ import annotations

from behavior_lm.version import __version__

from behavior_lm.data.events import EventLog
from behavior_lm.data.pipeline import PreparedData, prepare_data
from behavior_lm.data.readers import read_events
from behavior_lm.data.sources import load_events
from behavior_lm.models import rnn as _rnn  # noqa: F401  (registers GRU/LSTM with the Auto classes)
from behavior_lm.models import text_ranker as _text_ranker  # noqa: F401  (registers the text ranker)
from behavior_lm import tasks as _tasks  # noqa: F401  (registers the tasks, and their rows with the data layer)
from behavior_lm.inference.pipelines import NextBehaviorPipeline, register as _register_pipeline
from behavior_lm.errors import BehaviorLMError, DataError, RecipeError
from behavior_lm.evaluation.metrics import rank_of_target, ranking_metrics
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.tokenization.behavior_tokenizer import build_tokenizer
from behavior_lm.arguments import BehaviorTrainingArguments, DataArguments, ModelArguments
from behavior_lm.training.run import train

_register_pipeline()  # pipeline("next-behavior", model=...)

__all__ = [
    "BehaviorLMError", "BehaviorTrainingArguments", "DataArguments", "DataError", "EvalProtocol",
    "EventLog", "ModelArguments", "NextBehaviorPipeline", "PreparedData", "RecipeError", "build_tokenizer", "load_events",
    "prepare_data", "rank_of_target", "ranking_metrics", "read_events", "train", "__version__",
]
