"""One training run: data -> model -> Trainer -> test evaluation -> run directory.

The run directory is written atomically. Everything (checkpoints included) goes to
``<output_dir>.partial`` first; only when the model, tokenizer, metrics, table and plot are all
there is it renamed to ``<output_dir>``. A crash therefore never leaves a half run that looks
complete, and the next call with the same recipe resumes from the newest checkpoint in
``.partial``. The same code runs under ``accelerate launch``/``torchrun``: only the main process
writes, the others wait.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
from dataclasses import asdict
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from transformers import EarlyStoppingCallback, TrainerCallback, set_seed
from datasets import Dataset

from behavior_lm.tasks import get_task
from behavior_lm.data.cold_start import cold_start_subsets, cold_token_ids
from behavior_lm.data.pipeline import prepare_data, write_item_side
from behavior_lm.data.sources import cache_dir
from behavior_lm.errors import RecipeError
from behavior_lm.evaluation.harness import evaluate_baselines
from behavior_lm.evaluation.next_behavior import evaluate_next_behavior, next_behavior_table
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.evaluation.task_metrics import floor_metrics, make_task_metrics, tuned_threshold_metrics
from behavior_lm.models.auto import MASKED_MODEL_TYPES, count_parameters, effective_dropout, template_for
from behavior_lm.models.item_text_init import attach_item_text, bake_item_text, save_item_text
from behavior_lm.models.pretrained import is_peft_model, text_ranker_for_run, text_rows_for_run
from behavior_lm.models.text_ranker import save_ranker_files
from behavior_lm.models.output_prior import init_output_bias, item_log_prior
from behavior_lm.training.fused_softmax import FusedSoftmax
from behavior_lm.training.sampled_softmax import SAMPLED_MODEL_TYPES, SampledSoftmax
from behavior_lm.models.semantic_codes import semantic_ids_for_catalogue
from behavior_lm.data.semantic_rows import check_stream, code_rows, code_tokenizer
from behavior_lm.evaluation.generative import GenerativeRanker
from behavior_lm.tokenization.semantic_ids import CodeTrie
from behavior_lm.models.text_encoder import check_item_text, item_text_table
from behavior_lm.reporting import results_table, training_curves
from behavior_lm.rundir import (check_output_dir, check_writable, last_complete_checkpoint, partial_of,
                                promote, writer_lock)
from behavior_lm.tokenization.behavior_tokenizer import behavior_token_ids, item_mask
from behavior_lm.arguments import (BehaviorTrainingArguments, DataArguments, ModelArguments,
                                             redacted)
from behavior_lm.training.budget import TimeBudgetCallback, patience_spent, spent_seconds
from behavior_lm.data.collators import BehaviorCollator
from behavior_lm.training.trainer import BehaviorTrainer, make_compute_metrics, restricted_loss

logger = logging.getLogger(__name__)

SPLIT_TARGETS = {
    "leave_one_out": "last event per user (test); second-to-last (validation)",
    "temporal": "each user's first event after the global test (validation) cut",
}


def protocol_for(data_args: DataArguments, training_args: BehaviorTrainingArguments,
                 with_behaviors: bool = False, beams: int | None = None) -> EvalProtocol:
    target = SPLIT_TARGETS[data_args.split]
    if data_args.target_behavior:
        target = (f"last '{data_args.target_behavior}' event per user (test); the one before it "
                  "(validation)")
    target = get_task(data_args.task).target(data_args, target)   # windowed tasks describe their own
    scoring = "none"
    if with_behaviors:
        scoring = "target behavior" if training_args.condition_on_behavior else "mixture"
    return EvalProtocol(split=data_args.split, filter_seen=training_args.filter_seen,
                        candidates=f"beam search ({beams} beams)" if beams else "full",
                        ks=tuple(training_args.eval_ks), target=target,
                        max_length=data_args.max_length, behavior_scoring=scoring)


def train(data_args: DataArguments, model_args: ModelArguments,
          training_args: BehaviorTrainingArguments, recipe: dict | None = None,
          callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train and evaluate one recipe; returns the finished run directory.

    Before any heavy work: the output directory must be a new folder or a finished run (never a
    file or someone's folder), the cache must be writable, and no other process may be writing the
    same run (the main process holds ``<output_dir>.lock`` until the run is promoted).
    ``callbacks`` join the Trainer's (e.g. the search's pruning callback)."""
    final = Path(training_args.output_dir)
    check_output_dir(final, training_args.overwrite_output_dir)
    if data_args.cache:
        check_writable(cache_dir(), "the data cache (BEHAVIOR_LM_CACHE)")
    main_process = int(os.environ.get("RANK", "0")) == 0
    with writer_lock(final) if main_process else contextlib.nullcontext():
        return _train(data_args, model_args, training_args, recipe, callbacks)


def _train(data_args: DataArguments, model_args: ModelArguments,
           training_args: BehaviorTrainingArguments, recipe: dict | None,
           extra_callbacks: Sequence[TrainerCallback] = ()) -> Path:
    training_args = copy.copy(training_args)     # the Trainer's settings; the caller's stay as given
    final = Path(training_args.output_dir)
    partial = partial_of(final)
    task = get_task(data_args.task)
    ranking = task.ranking
    if not ranking and training_args.metric_for_best_model == "ndcg@10":  # the ranking default
        training_args.metric_for_best_model = task.best_metric
        training_args.greater_is_better = task.greater_is_better
    _, at, best_k = (training_args.metric_for_best_model or "").rpartition("@")
    if ranking and at and best_k not in {str(k) for k in training_args.eval_ks}:
        raise RecipeError(f"metric_for_best_model {training_args.metric_for_best_model!r} needs its K "
                          f"in eval_ks {training_args.eval_ks}")
    if training_args.cloze_loss not in ("items", "vocabulary"):
        raise RecipeError(f"cloze_loss must be 'items' or 'vocabulary', got {training_args.cloze_loss!r}")
    semantic = model_args.semantic_ids
    if semantic:
        check_semantic_recipe(data_args, model_args, training_args)
    if model_args.item_text or model_args.model_type == "pretrained" or semantic:
        check_item_text(model_args.item_text or "dataset", data_args.dataset, model_args.item_text_mode,
                        needs_text=model_args.model_type == "pretrained")
    if training_args.max_train_minutes is not None and training_args.max_train_minutes <= 0:
        raise RecipeError(f"max_train_minutes must be positive, got {training_args.max_train_minutes}")
    training_args.output_dir = str(partial / "checkpoints")
    # the Trainer would push checkpoints during training; the CLI pushes the finished run once,
    # with its card, after train() returns (behavior_lm.hub.push_run)
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise RecipeError("push_to_hub: true needs hub_model_id: ORG/NAME in the recipe")
    training_args.push_to_hub = False
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="preparing token streams"):
        data = prepare_data(data_args, template=task.template(model_args.model_type))
    tokenizer, dsd = data.tokenizer, data.datasets
    id_tokenizer, id_dsd = tokenizer, dsd               # what the floors read
    serialization = sids = ranker = None
    text_ranker = model_args.model_type == "pretrained" and ranking
    if text_ranker:                                     # the next-item split as text, items as text embeddings
        with training_args.main_process_first(desc="writing histories as text"):
            dsd, tokenizer, serialization, ranker, ranker_items, ranker_texts = text_ranker_for_run(
                dsd, tokenizer, model_args, data_args.dataset, data_args.examples_per_user, training_args.seed)
    if semantic:                                        # the same rows, items written as codes
        check_stream(data.info["stream"])
        with training_args.main_process_first(desc="semantic ids from item text"):
            sids = semantic_ids_for_catalogue(tokenizer, model_args, data_args.dataset)
        tokenizer = code_tokenizer(sids, template_for(model_args.model_type), data_args.max_length)
        dsd = code_rows(dsd, id_tokenizer, sids, tokenizer)
    if model_args.model_type == "pretrained" and not ranking:   # the same examples, written as text
        with training_args.main_process_first(desc="writing histories as text"):
            dsd, tokenizer, serialization = text_rows_for_run(dsd, tokenizer, model_args, data_args.dataset)
    validation = validation_subset(dsd["validation"], training_args.max_eval_users)

    # the protocol is decided once, before training: the Trainer's ranking and the final scores follow it
    protocol = protocol_for(data_args, training_args, data.info["with_behaviors"],
                            model_args.semantic_id_beams if semantic else None)
    num_classes = len(data.info["class_names"])
    model = ranker if ranker is not None else task.build_model(
        model_args, tokenizer, sids.positions(data_args.max_length) if sids else data_args.max_length,
        num_labels=num_classes)
    text_info = None
    if model_args.item_text and model_args.model_type != "pretrained" and not semantic:   # pretrained: what it reads
        with training_args.main_process_first(desc="embedding item text"):   # one process encodes
            text_info = attach_text(model, tokenizer, model_args, data_args)
    cold_ids = cold_token_ids(tokenizer, data.info)
    describe_run_in_config(model.config, data_args, model_args, training_args, data.info, text_info)
    sampled = None
    if ranking and not semantic and not text_ranker:  # popularity in the bias, not in the item rows
        items = item_mask(tokenizer, model.get_output_embeddings().out_features)
        model.config.behavior_lm["output_bias_init"] = init_output_bias(
            model, dsd["train"], items, model_args.output_bias_init)
        if training_args.softmax == "sampled":
            sampled = SampledSoftmax.build(
                items, training_args.negative_sampling, training_args.num_negatives, training_args.seed,
                log_prior=item_log_prior(dsd["train"], items) if training_args.negative_sampling == "popularity" else None,
                exclude=cold_ids, pad_token_id=tokenizer.pad_token_id)
    output_loss = sampled or fused_output_loss(model_args, training_args, ranking and not semantic and not text_ranker,
                                               cold_ids)
    model.config.behavior_lm["softmax"] = (
        {"kind": "sampled", "num_negatives": training_args.num_negatives,
         "negative_sampling": training_args.negative_sampling} if sampled else
        {"kind": "full", "fused": output_loss is not None,
         "matmul_dtype": str(output_loss.matmul_dtype).removeprefix("torch.") if output_loss else "float32",
         "label_smoothing": float(training_args.label_smoothing_factor or 0.0)})
    if serialization is not None:
        model.config.behavior_lm["text_serialization"] = serialization
    if sids is not None:
        model.config.behavior_lm["semantic_ids"] = semantic_record(sids, model_args)
    checkpoint = None
    if training_args.resume and Path(training_args.output_dir).is_dir():
        checkpoint = last_complete_checkpoint(Path(training_args.output_dir))
        if checkpoint:
            logger.warning("resuming from %s", checkpoint)
    budget = TimeBudgetCallback(training_args.max_train_minutes, spent_before=spent_seconds(checkpoint))
    callbacks: list = [budget, *extra_callbacks]
    if training_args.early_stopping_patience > 0:
        stopper = EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience)
        stopper.early_stopping_patience_counter = patience_spent(checkpoint)   # a resume continues the count
        if stopper.early_stopping_patience_counter:
            logger.warning("early stopping: %d of %d evaluations without improvement carried over from %s",
                           stopper.early_stopping_patience_counter, stopper.early_stopping_patience, checkpoint)
        callbacks.append(stopper)
    with _tensorboard_logs(partial / "logs"):  # read when the Trainer builds its callbacks
        trainer = BehaviorTrainer(
            model=model, args=training_args, train_dataset=dsd["train"], eval_dataset=validation,
            data_collator=make_collator(model_args, tokenizer, ranking), processing_class=tokenizer,
            compute_metrics=(make_compute_metrics(protocol.ks) if ranking
                             else make_task_metrics(data_args.task, num_classes)),
            compute_loss_func=(None if text_ranker else
                               training_loss(model, model_args, training_args, tokenizer, ranking, cold_ids)),
            callbacks=callbacks, filter_seen=protocol.filter_seen,
            behavior_ids=torch.tensor(list(behavior_token_ids(tokenizer).values()), dtype=torch.long),
            condition_on_behavior=training_args.condition_on_behavior,
            item_mask=(torch.ones(len(ranker_items), dtype=torch.bool) if text_ranker
                       else _candidates(tokenizer, model, cold_ids) if ranking and not semantic else None),
            output_loss=output_loss, item_chunk=training_args.eval_item_chunk,
            generative=(GenerativeRanker(CodeTrie(sids, tokenizer.get_vocab()), model_args.semantic_id_beams,
                                         tokenizer.pad_token_id, protocol.filter_seen) if semantic else None))

    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = budget.spent()                     # all segments of a resumed run
    if checkpoint and (whole := whole_run_loss(trainer.state.log_history, trainer.state.global_step)) is not None:
        # the Trainer's train_loss sums the resumed segment's losses only, over every step
        train_output.metrics["train_loss"] = whole
    stopped_by = _stop_reason(trainer, budget, training_args)
    _sync_weights_from_main(trainer)
    projection = bake_item_text(trainer.model)        # a stock model again, scored and saved as such
    if ranking and not semantic and not text_ranker:  # final scoring: the whole catalogue, cold items too
        trainer.item_mask = item_mask(tokenizer, model.get_output_embeddings().out_features)
    trainer.remove_callback(EarlyStoppingCallback)  # final scoring is not a selection step
    if not task.tunes_threshold(num_classes):
        val_metrics = trainer.evaluate(validation, metric_key_prefix="validation")
        test_metrics = trainer.evaluate(dsd["test"], metric_key_prefix="test")
    else:                                     # binary: keep the outputs to tune a threshold on validation
        val_out = trainer.predict(validation, metric_key_prefix="validation")
        test_out = trainer.predict(dsd["test"], metric_key_prefix="test")
        val_metrics, test_metrics = dict(val_out.metrics), dict(test_out.metrics)
        tuned = tuned_threshold_metrics(data_args.task, val_out.predictions, val_out.label_ids,
                                        test_out.predictions, test_out.label_ids)
        test_metrics.update({f"test_{k}": v for k, v in tuned.items()})
    val_metrics.setdefault("validation_num_examples", validation.num_rows)   # token tasks: tokens
    test_metrics.setdefault("test_num_examples", dsd["test"].num_rows)

    subsets = cold_start_subsets(dsd["test"], cold_ids)
    subset_metrics = {name: {**_strip(trainer.evaluate(part, metric_key_prefix=name), f"{name}_"),
                             "num_examples": part.num_rows} for name, part in subsets.items()}

    trainer.save_model(str(partial))  # model (safetensors) + tokenizer; writes on the main process
    if trainer.is_world_process_zero():
        if is_peft_model(model):            # the adapter's folder: add our config, drop peft's blank card
            model.config.save_pretrained(partial)
            (partial / "README.md").unlink(missing_ok=True)
        if projection is not None:
            save_item_text(partial, projection, text_info)
        if sids is not None:
            sids.save(partial)
        if text_ranker:
            save_ranker_files(partial, trainer.model, ranker_items, ranker_texts)
        if ranking:
            baselines = evaluate_baselines(training_args.baselines, id_dsd["train"], id_dsd["test"], id_tokenizer,
                                           protocol, batch_size=training_args.per_device_eval_batch_size)
            for name, part in subsets.items():
                subset_metrics[name] = {"model": subset_metrics[name], "baselines": evaluate_baselines(
                    training_args.baselines, dsd["train"], part, tokenizer, protocol,
                    batch_size=training_args.per_device_eval_batch_size)}
        else:
            baselines = floor_metrics(data_args.task, id_dsd["train"], id_dsd["test"], num_classes, id_tokenizer,
                                      data_args.intent_behavior)
        next_behavior = None
        if (ranking and data.info["with_behaviors"] and not data_args.target_behavior
                and model_args.model_type not in MASKED_MODEL_TYPES):
            next_behavior = evaluate_next_behavior(trainer.model, dsd["test"], dsd["train"], tokenizer,
                                                   training_args.per_device_eval_batch_size)
        _write_run_files(partial, data_args, model_args, training_args, recipe, data.info, protocol,
                         trainer, train_output.metrics, train_seconds, val_metrics, test_metrics,
                         baselines, count_parameters(model), next_behavior, stopped_by, text_info,
                         subset_metrics, serialization, sum(p.numel() for p in model.parameters()),
                         semantic_record(sids, model_args, test_metrics) if sids else None)
        if data_args.item_side and data.side_values:
            write_item_side(partial, data_args.item_side, data.side_values)
        if not training_args.keep_checkpoints:
            shutil.rmtree(partial / "checkpoints", ignore_errors=True)
        promote(partial, final)
    trainer.accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def _tensorboard_logs(folder: Path):
    """``report_to: tensorboard`` writes its event files into the run directory (``logs/``), not
    into the checkpoints that are deleted; a ``TENSORBOARD_LOGGING_DIR`` set by the user wins."""
    if "TENSORBOARD_LOGGING_DIR" in os.environ:
        yield
        return
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("TENSORBOARD_LOGGING_DIR", None)


def attach_text(model, tokenizer, model_args: ModelArguments, data_args: DataArguments) -> dict:
    """Parametrize the model's item rows by item text (``item_text``); returns what the run
    records about it (source and its sha256, encoder, fields, coverage)."""
    fields = model_args.text_fields()
    ids, vectors, record = item_text_table(model_args.item_text, dataset=data_args.dataset, text_fields=fields,
                                           encoder=model_args.text_encoder, id_map=model_args.item_text_id_map)
    info = attach_item_text(model, tokenizer, ids, vectors, model_args.item_text_mode,
                            model_args.initializer_range)
    logger.warning("item_text: %d of %d items have text (%s); mode %s", info["items_with_text"],
                   info["items"], record["source"], info["mode"])
    return {**info, **record}


GENERATIVE_MODEL_TYPES = ("gpt2", "llama")


def check_semantic_recipe(data_args: DataArguments, model_args: ModelArguments,
                          training_args: BehaviorTrainingArguments) -> None:
    """What a semantic-id run needs, refused before any heavy work."""
    if model_args.model_type not in GENERATIVE_MODEL_TYPES:
        raise RecipeError(f"semantic_ids: the model generates codes with `generate`; model_type must be one of "
                          f"{', '.join(GENERATIVE_MODEL_TYPES)}, got {model_args.model_type!r}")
    if not get_task(data_args.task).ranking or data_args.cold_items or data_args.target_behavior:
        raise RecipeError("semantic_ids: task next-item only, without cold_items or target_behavior")
    if model_args.semantic_id_beams < max(training_args.eval_ks):
        raise RecipeError(f"semantic_id_beams ({model_args.semantic_id_beams}) must be at least the largest "
                          f"eval_ks ({max(training_args.eval_ks)}): the beams are the ranking")


def semantic_record(sids, model_args: ModelArguments, test_metrics: dict | None = None) -> dict:
    """What ``config.json`` / ``metrics.json`` say about a semantic-id run's codes (and, after the
    test scoring, its decoding time per user)."""
    from behavior_lm.tokenization.semantic_ids import CODES_FILE

    record = {"file": CODES_FILE, "levels": sids.levels, "codebook_size": sids.codebook_size,
              "code_length": sids.code_length, "beams": model_args.semantic_id_beams,
              **{k: v for k, v in sids.info.items()}}
    if test_metrics and test_metrics.get("test_runtime") and test_metrics.get("test_num_ranked"):
        record["decode_ms_per_user"] = round(1000 * test_metrics["test_runtime"] / test_metrics["test_num_ranked"], 2)
    return record


def _candidates(tokenizer, model, cold_ids: torch.Tensor | None) -> torch.Tensor:
    """The items validation ranks while training: all, except cold items in the cold-start
    protocol (they do not exist yet; early stopping and the best checkpoint must not depend on
    them). The final validation and test scores rank the whole catalogue."""
    mask = item_mask(tokenizer, model.get_output_embeddings().out_features)
    if cold_ids is not None:
        mask[cold_ids] = False
    return mask


def fused_output_loss(model_args: ModelArguments, training_args: BehaviorTrainingArguments, item_ranking: bool,
                      cold_ids: torch.Tensor | None) -> FusedSoftmax | None:
    """The full softmax computed in item chunks (``fused_softmax: true``, the default) where it is
    exactly the stock loss: next-item models on item ids (causal, or BERT4Rec's cloze loss over
    the whole vocabulary), no cold items left out; ``label_smoothing_factor`` as the Trainer's
    ``LabelSmoother`` (whose logits-sized pass made a Beauty step ~15x slower). Its output matmuls
    run in bfloat16 under ``bf16: true``."""
    masked_full_vocabulary = model_args.model_type in MASKED_MODEL_TYPES and training_args.cloze_loss == "vocabulary"
    if not (training_args.fused_softmax and item_ranking and training_args.softmax == "full"
            and (model_args.model_type in SAMPLED_MODEL_TYPES or masked_full_vocabulary) and cold_ids is None):
        return None
    return FusedSoftmax(torch.bfloat16 if training_args.bf16 else torch.float32,
                        float(training_args.label_smoothing_factor or 0.0))


def training_loss(model, model_args: ModelArguments, training_args: BehaviorTrainingArguments,
                  tokenizer, ranking: bool, cold_ids: torch.Tensor | None):
    """The Trainer's ``compute_loss_func``: None (the model's stock loss) unless the softmax must
    leave tokens out: non-items for a masked model with ``cloze_loss: items``, cold items in the
    cold-start protocol."""
    if not ranking:
        return None
    n = model.get_output_embeddings().out_features
    masked = model_args.model_type in MASKED_MODEL_TYPES
    if masked and training_args.cloze_loss == "items":
        keep = item_mask(tokenizer, n)
    elif cold_ids is not None:
        keep = torch.ones(n, dtype=torch.bool)
    else:
        return None
    if cold_ids is not None:
        keep[cold_ids] = False
    return restricted_loss(keep, shift=not masked)


def describe_run_in_config(config, data_args: DataArguments, model_args: ModelArguments,
                           training_args: BehaviorTrainingArguments, data_info: dict,
                           text_info: dict | None = None) -> None:
    """Store what inference needs in ``config.json`` (it travels with the weights to the Hub):
    the behaviors of the log, whether the run ranked with seen items filtered, and class names."""
    from behavior_lm.version import __version__

    config.behavior_lm = {
        "version": __version__, "task": data_args.task, "dataset": data_args.dataset,
        "model_type": model_args.model_type, "behaviors": list(data_info["prepared"]["behaviors"]),
        "filter_seen": bool(training_args.filter_seen), "split": data_args.split,
        "item_side": data_args.item_side,
        # everything the stream format needs to serialize a history as training did
        "max_length": data_args.max_length, "stream": dict(data_info["stream"]),
        "dropout": effective_dropout(model_args),
        # how training drew its dropout masks (behavior_lm/models/fast_dropout.py)
        "dropout_masks": "pcg64" if getattr(training_args, "fast_dropout", False) else "torch",
    }
    if text_info:
        config.behavior_lm["item_text"] = text_info
    if get_task(data_args.task).named_labels:
        names = list(data_info["class_names"])
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}


VALIDATION_SUBSET_SEED = 42


def validation_subset(validation: Dataset, max_users: int | None) -> Dataset:
    """At most ``max_users`` validation rows, the same users whatever the run's ``seed``.

    Why fixed: runs that differ only in their seed must be compared on the same users. The subset
    used to follow the training seed, and on ML-1M the 2,000 users of seed 42 score ~0.02 NDCG@10
    above all 6,040 (docs/benchmarks.md), which read as a better seed. 42 keeps the subset that
    the documented seed-42 runs validated on."""
    if max_users and validation.num_rows > max_users:
        return validation.shuffle(seed=VALIDATION_SUBSET_SEED).select(range(max_users))
    return validation


def make_collator(model_args: ModelArguments, tokenizer, ranking: bool = True) -> BehaviorCollator:
    """Causal batches, or cloze batches for masked-item models on next-item rows (labelled rows
    pass through)."""
    if model_args.model_type in MASKED_MODEL_TYPES and ranking:
        return BehaviorCollator(tokenizer.pad_token_id, mask_token_id=tokenizer.mask_token_id,
                                mask_probability=model_args.mask_probability,
                                mask_last_probability=model_args.mask_last_probability,
                                maskable=item_mask(tokenizer))
    return BehaviorCollator(tokenizer.pad_token_id)


def _sync_weights_from_main(trainer: BehaviorTrainer) -> None:
    """Make every process hold the main process's (best) weights before the final scoring.

    With several processes, ``load_best_model_at_end`` may run on a replica before the main
    process has finished writing the last checkpoint (the Trainer warns "Could not locate the best
    model"); that replica would then score its shard of the test users with other weights. The
    main process always has the best model, so broadcast it.
    """
    if trainer.accelerator.num_processes <= 1:
        return
    import torch.distributed as dist

    trainer.accelerator.wait_for_everyone()
    for tensor in trainer.model.state_dict().values():
        dist.broadcast(tensor.data, src=0)


_SUBSET_TITLES = {"test_warm": "Cold-start protocol, test users whose target is a warm item",
                  "test_cold": "Cold-start protocol, test users whose target is a cold item (never in training)"}


def _strip(metrics: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in metrics.items()}


def whole_run_loss(log_history: list[dict], global_step: int) -> float | None:
    """Mean training loss over all steps of a run, from its logged per-interval means (each
    weighted by its steps), which a resumed run restores from its checkpoint: ``None`` when the
    log does not reach ``global_step``. The logged means are rounded to 4 decimals by the
    Trainer, so this is within 1e-4 of the exact mean."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] > last:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last and last == global_step else None


def _stop_reason(trainer, budget: TimeBudgetCallback, training_args) -> str:
    """Why training ended: a reader of a table of runs must know which ones were cut short."""
    if budget.stopped:
        return f"time budget ({training_args.max_train_minutes:g} min)"
    for callback in trainer.callback_handler.callbacks:
        if (isinstance(callback, EarlyStoppingCallback)
                and callback.early_stopping_patience_counter >= callback.early_stopping_patience):
            return f"early stopping (patience {callback.early_stopping_patience})"
    return "epoch cap"


def _write_run_files(run: Path, data_args, model_args, training_args, recipe, data_info, protocol,
                     trainer, train_metrics, train_seconds, val_metrics, test_metrics, baselines,
                     n_params, next_behavior: dict | None = None, stopped_by: str = "epoch cap",
                     text_info: dict | None = None, subset_metrics: dict | None = None,
                     serialization: dict | None = None, total_params: int | None = None,
                     semantic: dict | None = None) -> None:
    history = trainer.state.log_history
    best_epoch = None
    metric = "eval_" + training_args.metric_for_best_model.removeprefix("eval_")
    evals = [h for h in history if metric in h]
    if evals:
        pick = max if training_args.greater_is_better is not False else min
        best_epoch = pick(evals, key=lambda h: h[metric])["epoch"]
    model_name = f"{model_args.model_type} ({n_params / 1e6:.2f}M params)"
    if semantic is not None:
        model_name = (f"{model_args.model_type}, semantic ids {semantic['levels']}x{semantic['codebook_size']}"
                      f"+1, {semantic['beams']} beams ({n_params / 1e6:.2f}M params)")
    if serialization is not None:
        lora = serialization["lora"]
        model_name = (f"{serialization['base_model']} {'LoRA r=' + str(lora['r']) if lora else 'fine-tuned'} "
                      f"({n_params / 1e6:.2f}M of {total_params / 1e6:.2f}M params trained)")
    metrics = {
        "protocol": protocol.to_dict(),
        "test": _strip(test_metrics, "test_"),
        "validation": _strip(val_metrics, "validation_"),
        "baselines": {"test": baselines},
        "train": {"seconds": round(train_seconds, 1), "epochs_run": trainer.state.epoch,
                  "best_epoch": best_epoch, "global_steps": trainer.state.global_step,
                  "stopped_by": stopped_by,
                  "world_size": training_args.world_size,
                  "parameters": n_params, "total_parameters": total_params,
                  **{k: v for k, v in train_metrics.items()
                                             if k in ("train_loss", "train_runtime")}},
        "data": data_info,
        "model_type": model_args.model_type,
        "model": {"dropout": effective_dropout(model_args), **({"item_text": text_info} if text_info else {}),
                  **({"text_serialization": serialization} if serialization else {}),
                  **({"semantic_ids": semantic} if semantic else {})},
        "task": data_args.task,
    }
    for name, part in (subset_metrics or {}).items():
        metrics[name] = part["model"]
        metrics["baselines"][name] = part["baselines"]
    if next_behavior is not None:
        metrics["next_behavior"] = next_behavior
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (run / "log_history.json").write_text(json.dumps(history, indent=2, default=str))
    effective = dict(recipe or {})
    effective.update({k: v for k, v in asdict(data_args).items()})
    effective.update({k: v for k, v in asdict(model_args).items()})
    (run / "recipe.yaml").write_text(yaml.safe_dump(redacted(effective), sort_keys=False))
    (run / "training_args.json").write_text(training_args.to_json_string())
    # the Trainer also pickles its arguments; runs carry no pickles (JSON above says the same)
    (run / "training_args.bin").unlink(missing_ok=True)
    table = results_table(metrics, model_name)
    task = data_args.task
    kind = get_task(task)
    if kind.ranking:
        what = f"Protocol: {protocol.describe()}"
    else:
        what = kind.describe(data_info["class_names"], protocol.target)
    ds = data_info["dataset"]
    prep = data_info["prepared"]
    (run / "results.md").write_text(
        f"# {model_args.model_type} on {ds}, {task}: test results\n\n"
        f"{what}. Test {'users' if kind.ranking else 'examples'}: "
        f"{metrics['test'].get('num_examples', '')}; "
        f"{prep['users']} users, {prep['items']} items, {prep['events']} events after preprocessing.\n\n"
        f"{table}\n\n"
        + "".join(f"{_SUBSET_TITLES[name]} ({metrics[name].get('num_examples', '')} users):\n\n"
                  f"{results_table({**metrics, 'test': metrics[name], 'baselines': {'test': metrics['baselines'][name]}}, model_name)}\n\n"
                  for name in (subset_metrics or {}))
        + (f"Next behavior type on the same test events (P(b | history) from the model):\n\n"
           f"{next_behavior_table(next_behavior)}\n\n" if next_behavior else "")
        + f"Training: {metrics['train']['epochs_run']:g} epochs in {train_seconds:.0f} s, stopped by "
        f"{stopped_by} (best validation {training_args.metric_for_best_model} at epoch {best_epoch}).\n\n"
        "![training curves](training_curves.png)\n")
    training_curves(history, run / "training_curves.png",
                    metric=metric, title=f"{model_args.model_type} on {ds}")
