"""``conversion-tag``: for each browse of an item not yet converted in the history, will it be
carted or bought within the next ``intent_horizon`` events (token labels, binary)."""
from __future__ import annotations

from behavior_lm.arguments import DataArguments
from behavior_lm.data.pipeline import RowContext
from behavior_lm.data.tasks import build_conversion_task
from behavior_lm.tasks.event_class import EventClass
from behavior_lm.tasks.purchase_intent import WINDOWS, within


class ConversionTag(EventClass):
    """A label per (open browse) event, as ``event-class``: the same head, model types and unit."""

    name = "conversion-tag"
    summary = "each open browse in a history -> will its item convert within the next N events"
    heuristic = "repeat-views"
    headline = ("f1_macro", "roc_auc", "average_precision")

    def class_names(self, behaviors: list[str], args: DataArguments) -> list[str]:
        return ["no conversion", "converts"]

    def build_rows(self, ctx: RowContext):
        a = ctx.args
        return build_conversion_task(ctx.sequences, ctx.tokenizer, fmt=ctx.fmt, max_length=a.max_length,
                                     browse=a.browse_behavior, convert=tuple(a.conversion_behaviors),
                                     horizon=a.intent_horizon, seconds=a.intent_seconds,
                                     examples_per_user=a.examples_per_user, source=ctx.source)

    def target(self, args: DataArguments, split_target: str) -> str:
        return (f"each still-unconverted '{args.browse_behavior}' in the history: its item gets "
                f"{' or '.join(repr(b) for b in args.conversion_behaviors)} within the next "
                f"{args.intent_horizon} events{within(args)} {WINDOWS}")


TASK = ConversionTag()
