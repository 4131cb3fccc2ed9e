"""The task registry: every task is a :class:`~behavior_lm.tasks.base.Task` registered here by name.

``get_task(name)`` is how the rest of the package learns what a task needs (its rows, its
model head, its metrics and floors, its default checkpoint metric); nothing outside this package
compares task names. Registering also hands the task's row builder to the data layer
(:func:`behavior_lm.data.pipeline.register_task_rows`), which calls it without importing this
package. To add a task: a module here with a ``Task`` subclass and ``TASK = ...``, one line in
``_BUILTIN`` below, its tests.
"""
from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from behavior_lm.arguments import ModelArguments
from behavior_lm.data.pipeline import register_task_rows
from behavior_lm.errors import RecipeError
from behavior_lm.tasks.base import Task
from behavior_lm.tasks import conversion_tag, event_class, next_class, next_item, next_rating, purchase_intent

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` known by its name (to recipes, the data pipeline and every command)."""
    if not task.name:
        raise ValueError("a task needs a name")
    TASKS[task.name] = task
    register_task_rows(task)
    return task


_BUILTIN = (next_item, next_class, next_rating, event_class, purchase_intent, conversion_tag)
for _module in _BUILTIN:
    register_task(_module.TASK)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise RecipeError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def template_for(model_type: str, task: str = "next-item") -> str:
    """The token template a model type trains on for a task."""
    return get_task(task).template(model_type)


def build_model(args: ModelArguments, tokenizer: PreTrainedTokenizerBase, max_length: int,
                task: str = "next-item", num_labels: int = 2) -> PreTrainedModel:
    """A fresh model for ``task`` (``Task.build_model``)."""
    return get_task(task).build_model(args, tokenizer, max_length, num_labels)


__all__ = ["TASKS", "Task", "build_model", "get_task", "register_task", "task_names", "template_for"]
