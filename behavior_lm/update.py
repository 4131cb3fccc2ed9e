"""``behavior-lm update RUN_DIR --events NEW_EVENTS --output_dir NEW_RUN``: continue training a
next-item run on events that arrived after it, without starting over.

- **Histories.** Each user's past is what the run has seen: its recipe's dataset, cleaned as the
  recipe says (:func:`~behavior_lm.data.pipeline.load_sequences`), plus the events of earlier
  updates (``update.json``). New events are appended after it (deduplicated, time order; no
  k-core: a new item with one event is still a new item).
- **New items** become new tokens (``tokenizer.add_tokens`` + ``model.resize_token_embeddings``)
  when they have at least the recipe's ``min_item_events`` events (its k-core; rarer ones are
  dropped from the windows, as a retrain on the same events would drop them);
  old items keep their ids, so the old model's scores of old items are untouched by the resize.
  A new item's embedding (and output row and bias where not tied) starts as the mean of the items
  it co-occurs with (within ``COOCCURRENCE_WINDOW`` events in the users' sequences), so it is
  ranked like its neighbours before any gradient step; items with no known neighbour start at the
  mean item. A run trained with item text (``item_text``, ``item_text.safetensors``) computes a new
  item's row from its text instead, through the run's learned projection, whenever the item table
  has the item (``UpdateSettings.item_text``, default the run's own ``item_text`` source).
- **Training** is the HF ``Trainer`` with the run's collator on windows that end in new events
  (serialized by the run's stream format, same layout as training) plus a replay sample of
  windows of the users' past (``replay`` times as many), which guards against forgetting.
- **Held-out check.** Each updated user's last new event is kept out of training (``holdout``)
  and ranked by the old and the updated model under the run's protocol: targets the old model
  cannot rank (new items) count as misses for it. Both rows are in ``metrics.json`` / ``results.md``.

The result is a run directory (model, extended tokenizer, ``update.json`` with the chain of
updates) that ``pipeline("next-behavior")``, ``predict``, ``serve`` and a further ``update`` load.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml
from datasets import Dataset
from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

from behavior_lm.arguments import DataArguments, ModelArguments, redacted
from behavior_lm.data import preprocess
from behavior_lm.data.pipeline import load_sequences
from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.readers import read_events
from behavior_lm.data.splits import Example
from behavior_lm.data.streams import StreamFormat, encode_texts, examples_dataset, train_windows
from behavior_lm.errors import RecipeError
from behavior_lm.evaluation.fusion import load_member
from behavior_lm.evaluation.harness import model_scorer, rank_dataset
from behavior_lm.evaluation.metrics import ranking_metrics
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.models.item_text_init import ITEM_TEXT_FILE, load_item_text, rows_from_text
from behavior_lm.models.text_encoder import item_text_table
from behavior_lm.reporting import metrics_table
from behavior_lm.rundir import check_output_dir, partial_of, promote, writer_lock
from behavior_lm.tokenization.behavior_tokenizer import SIDE_FILE, item_mask, item_token
from behavior_lm.training.run import make_collator
from behavior_lm.training.trainer import item_cloze_loss

logger = logging.getLogger(__name__)
UPDATE_FILE = "update.json"
COOCCURRENCE_WINDOW = 3
MISS = 10 ** 9            # the rank of a target a model cannot score (an item it does not know)


@dataclasses.dataclass
class UpdateSettings:
    """How to read the new events and how long to train on them."""

    data_format: str | None = None
    columns: str | None = None
    column_names: list[str] | None = None
    behavior_map: str | None = None
    num_train_epochs: float = 3.0
    learning_rate: float | None = None      # default: a fifth of the run's
    per_device_train_batch_size: int | None = None
    replay: float = 1.0                     # replayed past windows per new window
    holdout: bool = True
    seed: int = 42
    item_text: str | None = None            # new items' text (default: the run's item_text source)
    min_item_events: int | None = None      # a new item needs this many events (default: the recipe's k-core)


def _run_settings(run: Path) -> tuple[DataArguments, dict, dict, dict]:
    for name in ("recipe.yaml", "metrics.json", "config.json"):
        if not (run / name).is_file():
            raise RecipeError(f"{run}: not a finished run directory (no {name})")
    metrics = json.loads((run / "metrics.json").read_text())
    if metrics.get("task", "next-item") != "next-item" or metrics.get("model_type") == "ensemble":
        raise RecipeError(f"{run}: update continues next-item model runs (this is "
                          f"{metrics.get('model_type')} for {metrics.get('task')})")
    if metrics.get("data", {}).get("cold_start"):
        raise RecipeError(f"{run}: trained under the cold-start protocol (cold_items), which withheld items "
                          "from its training; update a run trained on the whole log")
    chain = json.loads((run / UPDATE_FILE).read_text()) if (run / UPDATE_FILE).is_file() else {"chunks": []}
    args_file = run / "training_args.json"
    training = json.loads(args_file.read_text()) if args_file.is_file() else {}
    return DataArguments.of_run(run), metrics, chain, training


def _read_new(path: Path, data_args: DataArguments, settings: UpdateSettings) -> list[UserSequence]:
    """The new events, read with the update's format options (default: the run's), deduplicated
    and filtered by the run's minimum rating; no k-core."""
    reader = dataclasses.replace(
        data_args, data_path=str(path),
        data_format=settings.data_format or data_args.data_format,
        columns=settings.columns if settings.columns is not None else data_args.columns,
        column_names=settings.column_names if settings.column_names is not None else data_args.column_names,
        behavior_map=settings.behavior_map if settings.behavior_map is not None else data_args.behavior_map)
    kwargs = reader.reader_kwargs()
    log = read_events(path, kwargs.pop("fmt", None), **kwargs)
    return preprocess.prepare(log, dedupe=data_args.dedupe, min_value=data_args.min_rating)


def past_sequences(run: Path, data_args: DataArguments, chain: dict) -> dict[str, UserSequence]:
    """Every user's events that ``run`` has seen: its dataset, then each earlier update chunk."""
    seqs = {s.user_id: s for s in load_sequences(data_args)}
    for chunk in chain.get("chunks", []):
        settings = UpdateSettings(**{k: chunk.get(k) for k in ("data_format", "columns", "column_names",
                                                                "behavior_map")})
        for s in _read_new(Path(chunk["events"]), data_args, settings):
            seqs[s.user_id] = _concat(seqs.get(s.user_id), s)
    return seqs


def _concat(old: UserSequence | None, new: UserSequence) -> UserSequence:
    if old is None:
        return new
    return UserSequence(old.user_id, old.items + new.items, old.behaviors + new.behaviors,
                        old.timestamps + new.timestamps, old.values + new.values, old.lines + new.lines)


def _neighbour_init(model, tokenizer, new_ids: dict[str, int], sequences: list[UserSequence],
                    old_size: int) -> dict[str, int]:
    """Each new item's input (and untied output) row = mean of the rows of the old items within
    ``COOCCURRENCE_WINDOW`` events of it; the mean item row when it has none. Returns how many
    new items had neighbours."""
    vocab = tokenizer.get_vocab()
    neighbours: dict[int, list[int]] = defaultdict(list)
    for seq in sequences:
        ids = [vocab.get(item_token(i), -1) for i in seq.items]
        for pos, tid in enumerate(ids):
            if tid >= old_size:
                lo, hi = max(0, pos - COOCCURRENCE_WINDOW), pos + COOCCURRENCE_WINDOW + 1
                neighbours[tid].extend(n for n in ids[lo:hi] if 0 <= n < old_size)
    item_rows = item_mask(tokenizer)[:old_size].nonzero().flatten()
    matrices = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(out.weight)
    biases = [b for b in (getattr(out, "bias", None), _mlm_bias(model)) if b is not None]
    with torch.no_grad():
        for tid in new_ids.values():
            rows = torch.tensor(sorted(set(neighbours.get(tid, [])))) if neighbours.get(tid) else item_rows
            for w in matrices:
                w[tid] = w[rows].mean(dim=0)
            for b in biases:
                if b.numel() > tid:
                    b[tid] = b[rows].mean()
    return {"with_neighbours": sum(1 for t in new_ids.values() if neighbours.get(t)),
            "without": sum(1 for t in new_ids.values() if not neighbours.get(t))}


def _text_init(run: Path, recipe: dict, settings: UpdateSettings, model, new_ids: dict[str, int]) -> int:
    """New items' rows from their text through the run's learned projection (runs trained with
    ``item_text``), overriding the neighbour init where the item table has the item. The text is
    encoded as training encoded it (the run's recorded encoder and fields); the run's own item
    table must be the file it trained with (same sha256). An untied output layer had its own
    projection, which is not kept: its new rows keep the neighbour init. Returns how many new items
    got a text row."""
    loaded = load_item_text(run)
    spec = settings.item_text or recipe.get("item_text")
    if loaded is None or not spec or not new_ids:
        if settings.item_text and loaded is None:
            raise RecipeError(f"--item_text: {run} was not trained with item text (no item_text.safetensors)")
        return 0
    proj, mean, trained = loaded
    if not spec.endswith(".safetensors") and not trained.get("encoder"):
        raise RecipeError(f"--item_text {spec}: {run} trained on an embedding table of unknown encoder; "
                          "give an embed-items table made with the same encoder")
    ids, vectors, record = item_text_table(spec, dataset=recipe.get("dataset", ""),
                                           text_fields=trained.get("fields") or ["title", "genres"],
                                           encoder=trained.get("encoder") or "minilm",
                                           id_map=recipe.get("item_text_id_map"))
    if (record["source"] == trained.get("source") and trained.get("sha256")
            and record["sha256"] != trained["sha256"]):
        raise RecipeError(f"item_text: {record['source']} changed since {run} was trained (sha256 differs); "
                          "pass the new items' text with --item_text")
    if vectors.shape[1] != proj.shape[1]:
        raise RecipeError(f"item_text: vectors of size {vectors.shape[1]} from {record['source']}, but {run} "
                          f"projects size {proj.shape[1]} (another encoder?)")
    index = {i: n for n, i in enumerate(ids)}
    have = [(tid, index[i]) for i, tid in new_ids.items() if i in index]
    if not have:
        return 0
    rows = rows_from_text(proj, mean, vectors[[n for _, n in have]])
    targets = torch.tensor([tid for tid, _ in have])
    weight = model.get_input_embeddings().weight       # a tied output layer is the same matrix
    with torch.no_grad():
        weight[targets] = rows.to(weight.dtype)
    return len(have)


def _mlm_bias(model) -> torch.Tensor | None:
    """BERT's decoder bias lives in ``cls.predictions.bias`` (tied to the decoder's)."""
    predictions = getattr(getattr(model, "cls", None), "predictions", None)
    return getattr(predictions, "bias", None)


def _rank_rows(model, tokenizer, examples: list[Example], protocol: EvalProtocol, max_length: int,
               fmt: StreamFormat, batch_size: int) -> np.ndarray:
    """Ranks of the held-out targets; ``MISS`` where the tokenizer does not know the target."""
    vocab = tokenizer.get_vocab()
    known = [i for i, ex in enumerate(examples) if item_token(ex.target_item) in vocab]
    ranks = np.full(len(examples), MISS, dtype=np.int64)
    if known:
        rows = examples_dataset([examples[i] for i in known], tokenizer, max_length=max_length, fmt=fmt)
        ranks[known] = rank_dataset(model_scorer(model, tokenizer, protocol), rows, tokenizer, protocol,
                                    batch_size=batch_size, vocab_size=model.get_output_embeddings().out_features)
    return ranks


def update_run(run_dir: str | Path, events: str | Path, output_dir: str | Path,
               settings: UpdateSettings | None = None, overwrite: bool = False) -> Path:
    """Continue ``run_dir`` on ``events``; write the updated run to ``output_dir``."""
    settings = settings or UpdateSettings()
    run, final, events = Path(run_dir), Path(output_dir), Path(events)
    check_output_dir(final, overwrite)
    if not events.is_file():
        raise RecipeError(f"--events {events}: no such file")
    if not 0 <= settings.replay <= 100 or settings.num_train_epochs <= 0:
        raise RecipeError("replay must be in [0, 100] and num_train_epochs positive")
    data_args, metrics, chain, run_training = _run_settings(run)
    set_seed(settings.seed)
    with writer_lock(final):
        start = time.time()
        tokenizer = AutoTokenizer.from_pretrained(run)
        model = load_member(run, "next-item")
        info = dict(getattr(model.config, "behavior_lm", None) or {})
        saved_stream = dict(info.get("stream") or {})
        if info.get("semantic_ids") or info.get("text_serialization"):
            raise RecipeError(f"{run}: semantic-id and pretrained text-ranker runs cannot be updated yet (new items "
                              "need new codes or text rows); retrain with the new events")
        if saved_stream.get("item_side"):
            raise RecipeError(f"{run}: runs with item side tokens cannot be updated yet (new items "
                              "have no side value)")
        fmt = StreamFormat(behaviors=bool(saved_stream.get("behaviors")),
                           time_gaps=bool(saved_stream.get("time_gaps")),
                           session_gap=saved_stream.get("session_gap"))
        max_length = int(info.get("max_length") or data_args.max_length)
        protocol = EvalProtocol.from_dict(metrics["protocol"])
        past = past_sequences(run, data_args, chain)
        new = _read_new(events, data_args, settings)
        known_behaviors = set(info.get("behaviors") or [])
        if fmt.behaviors:
            odd = sorted({b for s in new for b in s.behaviors} - known_behaviors)
            if odd:
                raise RecipeError(f"{events}: behaviors {odd} are not in the run's stream "
                                  f"({sorted(known_behaviors)}); a new behavior needs a retrain")

        # held-out targets: each updated user's last new event (with a non-empty history)
        examples, train_new = [], []
        for s in new:
            merged = _concat(past.get(s.user_id), s)
            if settings.holdout and len(merged) >= 2:
                examples.append(Example.at(merged, len(merged) - 1))
                merged = merged.slice(0, len(merged) - 1)
            train_new.append(merged)
        old_ranks = _rank_rows(model, tokenizer, examples, protocol, max_length, fmt, 128)

        # new items -> new tokens, initialised from their neighbours
        vocab = tokenizer.get_vocab()
        # new items of the events trained on (a held-out target's item stays unknown if it is new)
        trained_new = [m.slice(max(0, len(m) - len(s)), len(m)) for m, s in zip(train_new, new)]
        candidates = list(dict.fromkeys(i for s in trained_new for i in s.items if item_token(i) not in vocab))
        # as the recipe's k-core: a new item needs min_item_events events (in the updated users'
        # histories) to become a token; rarer ones are dropped from the windows, as a retrain drops them
        need = max(1, settings.min_item_events if settings.min_item_events is not None
                   else data_args.min_item_events)
        counts = Counter(i for m in train_new for i in m.items)
        fresh = [i for i in candidates if counts[i] >= need]
        rare = set(candidates) - set(fresh)
        if rare:
            train_new = [m.pick([k for k, i in enumerate(m.items) if i not in rare]) for m in train_new]
        old_size = len(tokenizer)
        tokenizer.add_tokens([item_token(i) for i in fresh])
        new_ids = {i: tokenizer.convert_tokens_to_ids(item_token(i)) for i in fresh}
        init = {"with_neighbours": 0, "without": 0, "from_text": 0}
        recipe = yaml.safe_load((run / "recipe.yaml").read_text()) or {}
        if fresh:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            init = _neighbour_init(model, tokenizer, new_ids, train_new, old_size)
            init["from_text"] = _text_init(run, recipe, settings, model, new_ids)

        # windows that end in new events, plus a replay sample of the past
        # the newest window of each updated user holds the new events and the context before them
        new_texts = [train_windows(m, max_length=max_length, fmt=fmt, mode="last")[0]
                     for m in train_new if len(m) >= 2]
        rng = random.Random(settings.seed)
        pool = [s for s in past.values() if len(s) >= 2]
        replay_texts = [train_windows(s, max_length=max_length, fmt=fmt, mode="last")[0]
                        for s in rng.sample(pool, min(len(pool), math.ceil(settings.replay * len(new_texts))))]
        texts = new_texts + replay_texts
        train = Dataset.from_dict({"input_ids": encode_texts(tokenizer, texts, max_length)})
        partial = partial_of(final)
        shutil.rmtree(partial, ignore_errors=True)
        model_args = ModelArguments.of_run(run)
        lr = (settings.learning_rate if settings.learning_rate is not None
              else float(run_training.get("learning_rate", 1e-3)) / 5)
        batch = settings.per_device_train_batch_size or int(run_training.get("per_device_train_batch_size", 32))
        kept = {k: run_training[k] for k in ("weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2",
                                              "adam_epsilon", "bf16", "fp16") if k in run_training}
        args = TrainingArguments(
            output_dir=str(partial / "checkpoints"), num_train_epochs=settings.num_train_epochs,
            learning_rate=lr, per_device_train_batch_size=batch, warmup_steps=0, save_strategy="no",
            report_to=[], logging_strategy="epoch", seed=settings.seed, disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), **kept)
        masked = type(model).__name__.endswith("ForMaskedLM")
        loss = (item_cloze_loss(item_mask(tokenizer, model.get_output_embeddings().out_features))
                if masked and run_training.get("cloze_loss") == "items" else None)
        if getattr(model, "loss_type", None) is None:         # as build_model: silences a warning
            model.loss_type = "ForMaskedLM" if type(model).__name__.endswith("ForMaskedLM") else "ForCausalLM"
        model.train()
        trainer = Trainer(model=model, args=args, train_dataset=train, compute_loss_func=loss,
                          data_collator=make_collator(model_args, tokenizer))   # the run's objective
        output = trainer.train()
        model.eval()
        new_ranks = _rank_rows(model, tokenizer, examples, protocol, max_length, fmt, 128)
        seconds = time.time() - start

        model.config.behavior_lm = {**info, "updated": True}
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        for name in ("training_args.json", SIDE_FILE, ITEM_TEXT_FILE):
            if (run / name).is_file():
                shutil.copy2(run / name, partial / name)
        chunk = {"events": str(events.resolve()), "data_format": settings.data_format, "columns": settings.columns,
                 "column_names": settings.column_names, "behavior_map": settings.behavior_map,
                 "users": len(new), "new_events": sum(len(s) for s in new), "new_items": len(fresh),
                 "new_items_too_rare": len(rare), "min_item_events": need,
                 "new_item_init": init, "train_windows": len(new_texts), "replay_windows": len(replay_texts),
                 "held_out": len(examples), "epochs": settings.num_train_epochs, "learning_rate": lr,
                 "seconds": round(seconds, 1)}
        (partial / UPDATE_FILE).write_text(json.dumps(
            {"base_run": chain.get("base_run", str(run.resolve())), "previous_run": str(run.resolve()),
             "chunks": [*chain.get("chunks", []), chunk]}, indent=2))
        before = {**ranking_metrics(old_ranks, protocol.ks), "num_examples": len(examples)}
        after = {**ranking_metrics(new_ranks, protocol.ks), "num_examples": len(examples)}
        out_metrics = {**metrics, "test": after, "validation": {},
                       "protocol": {**metrics["protocol"],
                                    "target": f"each updated user's last event of {events.name} (held out of the update)"},
                       "update": {"held_out": "each updated user's last new event", "before": before,
                                  "after": after, **chunk, "train_loss": output.training_loss},
                       "train": {**metrics.get("train", {}), "update_seconds": round(seconds, 1)},
                       "baselines": {"test": {}}}
        (partial / "metrics.json").write_text(json.dumps(out_metrics, indent=2, default=str))
        (partial / "results.md").write_text(
            f"# {metrics.get('model_type')} updated with {events.name}\n\n"
            f"{len(new)} users, {chunk['new_events']} new events, {len(fresh)} new items "
            f"({init['with_neighbours']} initialised from co-occurring items, {init['from_text']} from their text). Trained {settings.num_train_epochs:g} "
            f"epochs on {len(new_texts)} new windows + {len(replay_texts)} replayed ones in {seconds:.0f} s.\n\n"
            f"Held out: each updated user's last new event ({len(examples)}), {protocol.describe()}; "
            "a target the old model does not know counts as a miss for it.\n\n"
            + metrics_table({"before the update": before, "after the update": after}, protocol.ks) + "\n")
        (partial / "recipe.yaml").write_text(yaml.safe_dump(redacted(recipe), sort_keys=False))
        promote(partial, final)
    return final
