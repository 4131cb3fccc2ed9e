"""``event-class``: a stream -> the class of every event (token labels), classes as ``next-class``."""
from __future__ import annotations

from behavior_lm.data.pipeline import RowContext
from behavior_lm.data.tasks import EventLabeler, build_token_task
from behavior_lm.tasks.base import Task


class EventClass(Task):
    name = "event-class"
    summary = "a stream -> the class of every event (token classification)"
    token_level = True
    model_types = ("bert",)
    unit = "tagged events"

    def build_rows(self, ctx: RowContext):
        labeler = EventLabeler(ctx.behaviors, ctx.args.like_threshold, ctx.source)
        return build_token_task(ctx.split, ctx.tokenizer, labeler, max_length=ctx.args.max_length, fmt=ctx.fmt), None


TASK = EventClass()
