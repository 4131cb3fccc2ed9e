"""``next-item``: history -> the next item, the whole catalogue ranked (HR, NDCG, MRR @K)."""
from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from behavior_lm.arguments import ModelArguments
from behavior_lm.data.pipeline import RowContext
from behavior_lm.data.streams import build_dataset_dict
from behavior_lm.errors import RecipeError
from behavior_lm.models.auto import MODEL_TYPES, build_model, template_for
from behavior_lm.tasks.base import Task


class NextItem(Task):
    name = "next-item"
    summary = "history -> the next item (full-catalogue ranking)"
    ranking = True
    stream_rows = True
    model_types = MODEL_TYPES + ("pretrained",)      # pretrained: a text ranker (models/text_ranker.py)
    best_metric = "ndcg@10"
    headline = card_metrics = ("hr@10", "ndcg@10", "mrr@10")
    unit = "users"
    named_labels = False

    def build_rows(self, ctx: RowContext):
        return build_dataset_dict(ctx.split, ctx.tokenizer, max_length=ctx.args.max_length, fmt=ctx.fmt,
                                  train_windows_mode=ctx.args.train_windows), None

    def template(self, model_type: str) -> str:
        return template_for(model_type)

    def build_model(self, args: ModelArguments, tokenizer: PreTrainedTokenizerBase, max_length: int,
                    num_labels: int = 2) -> PreTrainedModel:
        if args.model_type == "pretrained":
            raise RecipeError("next-item with model_type pretrained is a text ranker over the catalogue, built by "
                              "the training run (behavior_lm.models.pretrained.text_ranker_for_run)")
        return build_model(args, tokenizer, max_length, head="next-token")


TASK = NextItem()
