"""Build a model from a config sized by the tokenizer (no Hub download, no custom forward).

Next-behavior generation uses stock causal LMs: the vocabulary *is* the item catalogue, so the
full-softmax next-token cross-entropy of ``*ForCausalLM`` is the SASRec-with-CE objective.
Special token ids come from the tokenizer, never from constants.
"""
from __future__ import annotations

from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase)

from behavior_lm.errors import RecipeError
from behavior_lm.arguments import ModelArguments
from behavior_lm.models.rnn import BehaviorRNNConfig

CAUSAL_MODEL_TYPES = ("gpt2", "llama", "gru", "lstm")
MASKED_MODEL_TYPES = ("bert4rec",)
MODEL_TYPES = CAUSAL_MODEL_TYPES + MASKED_MODEL_TYPES


CLASSIFIER_MODEL_TYPES = ("bert", "gru", "lstm", "pretrained")


def template_for(model_type: str) -> str:
    """Which token template (``tokenizer/grammar.json``) a model type trains on for next-item
    ranking (the other tasks read ``[CLS] ... [SEP]``: ``Task.template``)."""
    return "masked" if model_type in MASKED_MODEL_TYPES else "causal"


def effective_dropout(args: ModelArguments) -> dict[str, float]:
    """What ``dropout`` / ``attention_dropout`` become in the model's config, by place.

    ``dropout`` is hidden dropout for every model type: embeddings and each layer's output
    (GPT-2 ``embd_pdrop`` + ``resid_pdrop``, BERT ``hidden_dropout_prob``, the RNNs' embedding,
    between-layer and output dropout). ``attention_dropout`` (default: ``dropout``) is on attention
    probabilities. Stock ``LlamaForCausalLM`` has attention dropout only, so a llama recipe with
    hidden dropout is refused instead of silently training without it.
    """
    if args.model_type == "pretrained":       # the checkpoint's own config decides
        return {"embedding": None, "layer_output": None, "attention": None}
    attention = args.dropout if args.attention_dropout is None else args.attention_dropout
    for name, value in (("dropout", args.dropout), ("attention_dropout", attention)):
        if not 0.0 <= value < 1.0:
            raise RecipeError(f"{name} must be in [0, 1), got {value}")
    if args.model_type == "llama" and args.dropout > 0:
        raise RecipeError(f"model_type llama (stock LlamaForCausalLM) has no hidden dropout: set "
                          f"dropout: 0 and use attention_dropout (got dropout {args.dropout})")
    if args.model_type in ("gru", "lstm"):
        return {"embedding": args.dropout, "layer_output": args.dropout, "attention": 0.0}
    return {"embedding": args.dropout, "layer_output": args.dropout, "attention": attention}


def build_config(args: ModelArguments, tokenizer: PreTrainedTokenizerBase, max_length: int) -> PreTrainedConfig:
    """A config for ``args.model_type`` with ``vocab_size = len(tokenizer)``."""
    drop = effective_dropout(args)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               tie_word_embeddings=args.tie_word_embeddings, initializer_range=args.initializer_range)
    inner = args.intermediate_size or 4 * args.hidden_size
    if args.model_type == "gpt2":
        return AutoConfig.for_model(
            "gpt2", n_positions=max_length, n_embd=args.hidden_size, n_layer=args.num_layers,
            n_head=args.num_heads, n_inner=inner, resid_pdrop=drop["layer_output"],
            embd_pdrop=drop["embedding"], attn_pdrop=drop["attention"],
            # the same tanh GELU as GPT-2's gelu_new, as one fused kernel (~10% of training CPU)
            activation_function="gelu_pytorch_tanh", **ids)
    if args.model_type == "llama":
        return AutoConfig.for_model(
            "llama", hidden_size=args.hidden_size, intermediate_size=inner,
            num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
            num_key_value_heads=args.num_heads, max_position_embeddings=max_length,
            attention_dropout=drop["attention"], **ids)
    if args.model_type in ("bert4rec", "bert"):
        return AutoConfig.for_model(
            "bert", hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_heads, intermediate_size=inner,
            max_position_embeddings=max_length, hidden_dropout_prob=drop["layer_output"],
            attention_probs_dropout_prob=drop["attention"], type_vocab_size=1,
            mask_token_id=tokenizer.mask_token_id, **ids)
    if args.model_type in ("gru", "lstm"):
        return BehaviorRNNConfig(hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
                                 cell=args.model_type, dropout=args.dropout, **ids)
    raise ValueError(f"unknown model_type {args.model_type!r}; known: "
                     f"{', '.join(MODEL_TYPES + ('bert',))}")


HEADS = ("next-token", "sequence", "token")


def build_model(args: ModelArguments, tokenizer: PreTrainedTokenizerBase, max_length: int,
                head: str = "next-token", num_labels: int = 2, regression: bool = False) -> PreTrainedModel:
    """A freshly initialised model for the tokenizer's vocabulary with one of three heads:

    - ``next-token``: ``AutoModelForCausalLM`` (GPT-2, Llama, GRU/LSTM) or ``AutoModelForMaskedLM``
      (BERT4Rec), the item vocabulary as the output (next-item ranking);
    - ``sequence``: ``AutoModelForSequenceClassification`` (BERT, GRU/LSTM, or a pretrained
      checkpoint with ``model_type: pretrained``), ``num_labels`` classes or one value (``regression``);
    - ``token``: ``AutoModelForTokenClassification`` (BERT), a label per event.

    Which head a task needs, and which model types it allows, is the task's decision
    (:mod:`behavior_lm.tasks`, ``Task.build_model``)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if args.model_type == "pretrained":
        from behavior_lm.models.pretrained import build_pretrained_classifier

        if head != "sequence":
            raise RecipeError("build_model builds model_type pretrained as a sequence classifier (next-class, "
                              "next-rating); for next-item the training run builds a text ranker over the "
                              "catalogue (behavior_lm.models.pretrained.text_ranker_for_run)")
        return build_pretrained_classifier(args, 1 if regression else num_labels, regression)
    config = build_config(args, tokenizer, max_length)
    if head != "next-token":
        config.num_labels = 1 if regression else num_labels
        config.problem_type = "regression" if regression else "single_label_classification"
        auto = AutoModelForTokenClassification if head == "token" else AutoModelForSequenceClassification
        return auto.from_config(config)
    if args.model_type == "bert":
        raise ValueError("model_type bert is for the classification tasks; use bert4rec for next-item")
    masked = args.model_type in MASKED_MODEL_TYPES
    model = (AutoModelForMaskedLM if masked else AutoModelForCausalLM).from_config(config)
    if getattr(model, "loss_type", None) is None:          # GPT2LMHeadModel's name matches no loss
        model.loss_type = "ForMaskedLM" if masked else "ForCausalLM"   # (silences a warning per run)
    return model


def count_parameters(model: PreTrainedModel) -> int:
    """Trainable parameters, counting tied weights once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
