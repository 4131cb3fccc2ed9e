"""``purchase-intent``: history -> will ``intent_behavior`` (buy) follow within the next
``intent_horizon`` events (and ``intent_seconds``); its own per-user cuts, audited."""
from __future__ import annotations

from behavior_lm.arguments import DataArguments
from behavior_lm.data.pipeline import RowContext
from behavior_lm.data.tasks import build_intent_task
from behavior_lm.tasks.base import Task

WINDOWS = "(test: each user's last window; validation: the window before)"


def within(args: DataArguments) -> str:
    return f" and {args.intent_seconds} s" if args.intent_seconds else ""


class PurchaseIntent(Task):
    name = "purchase-intent"
    summary = "history -> will a buy follow within the next N events (binary)"
    model_types = ("bert", "gru", "lstm")     # a history without an item pair: no text form yet
    heuristic = "buy-rate"
    headline = ("f1_macro", "roc_auc", "average_precision")

    def class_names(self, behaviors: list[str], args: DataArguments) -> list[str]:
        return [f"no {args.intent_behavior}", args.intent_behavior]

    def build_rows(self, ctx: RowContext):
        a = ctx.args
        return build_intent_task(ctx.sequences, ctx.tokenizer, fmt=ctx.fmt, max_length=a.max_length,
                                 behavior=a.intent_behavior, horizon=a.intent_horizon, seconds=a.intent_seconds,
                                 examples_per_user=a.examples_per_user, source=ctx.source)

    def target(self, args: DataArguments, split_target: str) -> str:
        return (f"'{args.intent_behavior}' within the next {args.intent_horizon} events{within(args)} "
                + WINDOWS)


TASK = PurchaseIntent()
