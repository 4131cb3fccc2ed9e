"""``next-class``: (history, next item) -> what happens to it: its behavior on multi-behavior logs,
liked or not (value >= ``like_threshold``) on one-behavior logs."""
from __future__ import annotations

from behavior_lm.data.pipeline import RowContext
from behavior_lm.data.tasks import EventLabeler, build_sequence_task
from behavior_lm.tasks.base import Task


class NextClass(Task):
    name = "next-class"
    summary = "(history, next item) -> its behavior, or liked (value >= like_threshold)"
    pair_input = True

    def build_rows(self, ctx: RowContext):
        labeler = EventLabeler(ctx.behaviors, ctx.args.like_threshold, ctx.source, regression=self.regression)
        return build_sequence_task(ctx.split, ctx.tokenizer, labeler, max_length=ctx.args.max_length,
                                   fmt=ctx.fmt, examples_per_user=ctx.args.examples_per_user), None


TASK = NextClass()
