"""A task: what one example is, what its label is, which models may learn it and how it is scored.

Everything that differs between tasks is an attribute or a method of a :class:`Task`, so that the
rest of the package asks the task (``task.ranking``, ``task.regression``, ``task.build_rows(...)``)
instead of comparing its name. A new task is one module in this package that defines a subclass
and registers an instance (``tasks/__init__.py``), plus its tests.
"""
from __future__ import annotations

from collections.abc import Sequence

from datasets import DatasetDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from behavior_lm.arguments import DataArguments, ModelArguments
from behavior_lm.data.pipeline import RowContext
from behavior_lm.data.tasks import event_class_names
from behavior_lm.errors import RecipeError
from behavior_lm.models.auto import CLASSIFIER_MODEL_TYPES, build_model


class Task:
    """The base of every task; subclasses set the attributes and implement :meth:`build_rows`.

    Attributes:
        name: the recipe's ``task`` value.
        summary: one line for ``--help`` and the docs.
        ranking: the catalogue is ranked (next-item); no labels, HR/NDCG/MRR.
        regression: the label is a value (MAE/RMSE); else a class.
        token_level: a label per event (token classification) instead of one per example.
        pair_input: the example is ``[CLS] history [SEP] item [SEP]`` (the item asked about).
        model_types: the ``model_type`` values that can learn it.
        best_metric / greater_is_better: what selects the checkpoint by default.
        headline: the columns of a comparison table and chart.
        card_metrics: the metrics a model card's metadata lists.
        unit: what the test set counts (in tables and cards).
        heuristic: the name of the task's heuristic floor in ``evaluation/task_metrics.py``, if any.
        named_labels: the classes have names for ``config.id2label`` (not for ranking / regression).
    """

    name: str = ""
    summary: str = ""
    ranking: bool = False
    stream_rows: bool = False      # rows = data.streams.build_dataset_dict(split): may be built columnar
    regression: bool = False
    token_level: bool = False
    pair_input: bool = False
    model_types: tuple[str, ...] = CLASSIFIER_MODEL_TYPES
    best_metric: str = "f1_macro"
    greater_is_better: bool = True
    headline: tuple[str, ...] = ("accuracy", "f1_macro", "roc_auc")
    card_metrics: tuple[str, ...] = ("accuracy", "f1_macro", "roc_auc")
    unit: str = "examples"
    heuristic: str | None = None
    named_labels: bool = True

    # ------------------------------------------------------------------ data
    def check_data(self, args: DataArguments) -> None:
        """Refuse settings this task cannot use, before any data is read."""

    def class_names(self, behaviors: list[str], args: DataArguments) -> list[str]:
        """The classes of the label (recorded in ``info.json`` / ``metrics.json``); by default the
        event classes (behavior, or liked on one-behavior logs)."""
        return event_class_names(behaviors, args.like_threshold)

    def build_rows(self, ctx: RowContext) -> tuple[DatasetDict, dict | None]:
        """``(train/validation/test rows, a split summary or None to use the split's own)``."""
        raise NotImplementedError

    def target(self, args: DataArguments, split_target: str) -> str:
        """What a test example's label is about, for the protocol line of a run."""
        return split_target

    # ------------------------------------------------------------------ model
    def template(self, model_type: str) -> str:
        """The token template (``tokenizer/grammar.json``) of this task's rows."""
        return "classification"

    def head(self) -> str:
        return "token" if self.token_level else "sequence"

    def build_model(self, args: ModelArguments, tokenizer: PreTrainedTokenizerBase, max_length: int,
                    num_labels: int = 2) -> PreTrainedModel:
        """A fresh model for this task, refused with one line when ``args.model_type`` cannot learn it."""
        if args.model_type not in self.model_types:
            raise RecipeError(f"task {self.name!r} needs model_type in {self.model_types}, got {args.model_type!r}")
        return build_model(args, tokenizer, max_length, head=self.head(), num_labels=num_labels,
                           regression=self.regression)

    # ------------------------------------------------------------------ scoring
    def tunes_threshold(self, num_classes: int) -> bool:
        """Binary classification: also report precision/recall/F1 at the validation-tuned threshold."""
        return not self.ranking and not self.regression and num_classes == 2

    def describe(self, class_names: Sequence[str], target: str) -> str:
        """One line saying what a run predicts and on which examples."""
        what = "rating" if self.regression else ", ".join(class_names)
        return f"Task: {self.name} ({what}); test {self.unit}: {target}"

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
