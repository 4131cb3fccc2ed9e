"""A thin ``Trainer`` subclass: evaluation ranks the next item instead of returning logits.

Only ``prediction_step`` is overridden (upstream signature kept; the evaluation loop, its
distributed gathering and metric hooks are the Trainer's own). For ranking rows it returns
``(item cross-entropy, rank of each target, target ids)``: per-example ranks are all
``compute_metrics`` needs, so evaluation memory is ``O(batch * vocab)`` and nothing of size
``(users, vocab)`` is ever accumulated.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import EvalPrediction, Trainer

from behavior_lm.evaluation.generative import GenerativeRanker
from behavior_lm.evaluation.metrics import ranking_metrics
from behavior_lm.evaluation.scoring import (chunk_scoring_applies, chunked_ranks, is_masked_lm, next_item_scores,
                                            next_token_features, output_layer, score_ranks)
from behavior_lm.data.collators import IGNORE_INDEX
from behavior_lm.models.fast_dropout import use_fast_dropout
from behavior_lm.models.fused_llama import use_fused_llama
from behavior_lm.models.item_text_init import has_item_text, untied_state_dict
from behavior_lm.models.text_ranker import is_text_ranker
from behavior_lm.training.fused_softmax import FusedSoftmax, hidden_states_forward
from behavior_lm.training.heap import keep_freed_memory
from behavior_lm.training.sampled_softmax import SampledSoftmax


def tied_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that share their tensor with an earlier-named parameter (tied output
    layers): the ones a safetensors checkpoint stores under the other name only."""
    first: dict[int, str] = {}
    tied: set[str] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        key = param.data_ptr()
        if key in first:
            tied.add(name)
        else:
            first[key] = name
    return tied


def apply_cpu_training_settings(model: torch.nn.Module, args: Any) -> None:
    """What a CPU training run switches on, per its arguments: PCG64 dropout masks and Llama's fused
    RMSNorm/rotary embedding (no parameters or saved config change) and freed memory kept in the
    heap (process-wide: big tensors stop page-faulting each step). The Trainer and
    ``scripts/bench_speed.py`` share it."""
    if getattr(args, "fast_dropout", False):
        use_fast_dropout(model)
    if getattr(args, "fused_llama", False):
        use_fused_llama(model)
    if getattr(args, "keep_freed_memory", False):
        keep_freed_memory()


class BehaviorTrainer(Trainer):
    """``Trainer`` whose evaluation step scores the full item catalogue.

    Args:
        item_mask: ``(vocab,)`` bool, True at item tokens (the candidates).
        filter_seen: remove each user's history items from the ranking.
        behavior_ids: token ids of ``<b>`` on multi-behavior streams (items are then ranked by
            the mixture over behaviors, or given each target's behavior).
        condition_on_behavior: rank given the target's behavior instead of the mixture.
        generative: a semantic-id model's ranker (constrained beam search); rows' ``target`` and
            ``seen`` are then item indices of its code table.
        output_loss: the next-item loss computed from the final hidden states instead of the
            model's stock loss: the sampled softmax, or the full softmax in item chunks
            (:class:`FusedSoftmax`, the same loss without the ``(batch, length, vocab)`` logits).
        item_chunk: rank catalogues larger than this in item chunks (0: never).
    """

    def __init__(self, *args: Any, item_mask: torch.Tensor | None = None, filter_seen: bool = True,
                 behavior_ids: torch.Tensor | None = None, condition_on_behavior: bool = False,
                 generative: GenerativeRanker | None = None, output_loss: SampledSoftmax | FusedSoftmax | None = None,
                 item_chunk: int = 262144, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.device.type == "cpu":
            apply_cpu_training_settings(self.model, self.args)
        self.item_chunk = item_chunk
        self.generative = generative
        self.output_loss = output_loss
        self.item_mask = item_mask
        self.filter_seen = filter_seen
        self.behavior_ids = behavior_ids
        self.condition_on_behavior = condition_on_behavior

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """The Trainer warns "missing keys ... ['lm_head.weight']" whenever it reloads a checkpoint
        of a model whose output layer is tied to its input embeddings: safetensors stores the
        shared tensor once, so the tied name is absent by design. Re-tie and stay quiet for
        exactly those keys; any other missing or unexpected key still warns."""
        tied = tied_parameter_names(self.model)
        missing = [k for k in load_result.missing_keys if k not in tied]
        if len(missing) < len(load_result.missing_keys):
            self.model.tie_weights()
        load_result = type(load_result)(missing, load_result.unexpected_keys) if hasattr(
            load_result, "_fields") else load_result
        if missing or load_result.unexpected_keys:
            super()._issue_warnings_after_load(load_result)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # checkpoints of a model whose item rows are parametrized by text (item_text): its input
        # and output layers share the parametrization's tensors, which safetensors refuses
        if state_dict is None and has_item_text(self.accelerator.unwrap_model(self.model)):
            state_dict = untied_state_dict(self.accelerator.unwrap_model(self.model))
        super()._save(output_dir, state_dict)

    def _chunked(self, model: nn.Module, given: torch.Tensor | None) -> bool:
        return given is None and chunk_scoring_applies(model, self.item_chunk, self.behavior_ids)

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        """The stock loss, or ``output_loss`` (the sampled or the fused full cross-entropy): the
        (wrapped, so DDP still synchronises) model is asked for its final hidden states and one
        position of logits, never the ``(batch, length, vocab)`` logits."""
        if self.output_loss is None or "labels" not in inputs or "target" in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        unwrapped = self.accelerator.unwrap_model(model)
        with hidden_states_forward(unwrapped) as hidden_only:
            outputs = model(**inputs, **hidden_only)
        loss = self.output_loss.loss(unwrapped, outputs.hidden_states[-1], labels, step=self.state.global_step,
                                     num_items_in_batch=num_items_in_batch, shift=not is_masked_lm(unwrapped))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as the stock compute_loss: num_items_in_batch counts the targets of every process, and
            # DDP/FSDP average the gradients over processes, so each process's sum/total is scaled
            # back up (else gradients, clipping and the logged loss are 1/world_size of a 1-process run)
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model: nn.Module, inputs: dict[str, torch.Tensor | Any],
                        prediction_loss_only: bool, ignore_keys: list[str] | None = None):
        if "target" not in inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with full_precision(self.accelerator.unwrap_model(model)) as model:
            return self._ranking_step(model, inputs, prediction_loss_only)

    def _ranking_step(self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], prediction_loss_only: bool):
        if self.generative is not None:       # a semantic-id model: beams of generated codes
            ranks = self.generative.ranks(model, inputs["input_ids"], inputs["attention_mask"],
                                          inputs["target"], inputs.get("seen"))
            return None, ranks.float(), inputs["target"]
        with torch.no_grad():
            given = inputs.get("target_behavior") if self.condition_on_behavior else None
            if self._chunked(model, given):   # a catalogue too large for (batch, vocab) logits
                weight, bias = output_layer(model)
                features = next_token_features(model, inputs["input_ids"], inputs["attention_mask"])
                ranks, loss = chunked_ranks(features, weight, bias, inputs["target"], self.item_mask.to(features.device),
                                            inputs["seen"] if self.filter_seen else None, self.item_chunk)
                return (loss, None, None) if prediction_loss_only else (loss, ranks.float(), inputs["target"])
            if is_text_ranker(model):         # a pretrained LM ranking the catalogue by item text
                scores = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            else:
                scores = next_item_scores(model, inputs["input_ids"], inputs["attention_mask"],
                                          self.item_mask, self.behavior_ids, given)
            ranks, loss = score_ranks(scores, inputs["target"], self.item_mask,
                                      inputs["seen"] if self.filter_seen else None)
        if prediction_loss_only:
            return loss, None, None
        return loss, ranks.float(), inputs["target"]


@contextmanager
def full_precision(model: nn.Module):
    """The model with the forward it had before ``bf16: true`` mixed precision wrapped it.

    Accelerate wraps a prepared model's ``forward`` in a bfloat16 autocast that an outer
    ``autocast(enabled=False)`` cannot switch off. Ranking in bfloat16 would tie thousands of item
    scores (8 bits of mantissa) and rank differently from ``behavior-lm evaluate``, ``predict`` and
    the server, which load the float32 weights; so validation and test ranking run the original
    forward, in float32, as everything downstream does. Training keeps the autocast."""
    original = model.__dict__.get("_original_forward")
    if original is None:
        yield model
        return
    wrapped = model.__dict__["forward"]
    model.forward = original
    try:
        yield model
    finally:
        model.forward = wrapped


def restricted_loss(keep: torch.Tensor, shift: bool = False):
    """``compute_loss_func``: cross-entropy whose softmax covers only the tokens where ``keep`` is
    True (``shift``: causal next-token labels, as ``ForCausalLM`` shifts them).

    Two uses. Masked-item models (``cloze_loss: items``) normalise over item tokens, as ranking
    does: with the stock loss over the whole vocabulary, the ``[MASK]`` token's own output row (tied
    to its input embedding, which dominates the hidden state at every masked position) takes a
    large share of the probability at initialisation, and its gradient competes with the signal
    that context carries. The cold-start protocol leaves cold items out: they do not exist yet when
    the model trains, so they must not be pushed down as negatives either."""

    def loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        where = labels != IGNORE_INDEX
        picked = logits[where].float()                                                  # (N, V)
        mask = keep.to(picked.device)
        if mask.numel() < picked.size(1):
            mask = F.pad(mask, (0, picked.size(1) - mask.numel()), value=False)
        picked = picked.masked_fill(~mask[: picked.size(1)], float("-inf"))
        total = F.cross_entropy(picked, labels[where], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else where.sum().clamp(min=1)
        return total / count

    return loss


def item_cloze_loss(item_mask: torch.Tensor):
    """The cloze cross-entropy of masked-item models normalised over item tokens only
    (:func:`restricted_loss`)."""
    return restricted_loss(item_mask)


def make_compute_metrics(ks: Sequence[int]):
    """``compute_metrics`` for the Trainer: HR/NDCG/MRR@K from the ranks of ``prediction_step``."""

    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        ranks = np.asarray(pred.predictions).reshape(-1)
        metrics = ranking_metrics(ranks.astype(np.int64), ks)
        metrics["num_ranked"] = int(ranks.size)  # after gathering: one per example, no duplicates
        return metrics

    return compute_metrics
