"""``pipeline("next-behavior", model=RUN_DIR_OR_HUB_ID)``: raw events in, ranked raw items out.

Registered with ``PIPELINE_REGISTRY`` when ``behavior_lm`` is imported. A history is given as

- a list of item ids: ``["50", "172", 133]``;
- a list of ``(item, behavior)`` tuples: ``[("4021", "pv"), ("4021", "cart")]``, or
  ``(item, behavior, unix_seconds)`` / ``{"item", "behavior", "timestamp"}`` for a model trained with
  time-gap or session tokens (which needs the times to write them);
- a serialized stream: ``"<pv> i:4021 <cart> i:4021"`` (the tokenizer's own format);

and a batch is a list of histories (lists of lists, or lists of serialized strings).
Items the tokenizer does not know are dropped with a warning; an empty history falls back to the
model's unconditional distribution (what it predicts after ``[BOS]``) and says so in each output.

A history is serialized by the run's own :class:`~behavior_lm.data.streams.StreamFormat` (its
settings are in ``config.behavior_lm["stream"]``) and cut to the same number of whole events as the
rows the harness scored (:func:`~behavior_lm.data.streams.context_slice`), so the pipeline feeds the
model exactly the layout that training and evaluation used.
"""
from __future__ import annotations

import json
import math
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from behavior_lm.data.preprocess import UserSequence
from behavior_lm.data.streams import StreamFormat, context_slice
from behavior_lm.evaluation.fusion import BehaviorEnsembleConfig, BehaviorEnsembleModel
from behavior_lm.models.text_ranker import TextRankerConfig, is_text_ranker, load_text_ranker
from behavior_lm.inference.distribution import next_event_distributions
from behavior_lm.tokenization.behavior_tokenizer import (SIDE_FILE, behavior_token_ids, grammar,
                                                         is_behavior_token, is_item_token, item_id_of,
                                                         encode_tokens, item_mask, item_token)

logger = logging.getLogger(__name__)
TASK = "next-behavior"
EMPTY_NOTE = "empty history (no known items): the model's unconditional distribution"


@dataclass
class History:
    """One parsed history: ``events`` as ``(item, behavior or None)``; wrapped so the base
    ``Pipeline.__call__`` does not mistake a list of item ids for a batch."""

    events: list[tuple[str, str | None]] = field(default_factory=list)
    timestamps: list[int | None] | None = None   # parallel to ``events`` when times were given


def _parse_serialized(text: str) -> History:
    events: list[tuple[str, str | None]] = []
    pending: str | None = None
    head, _, tail = grammar()["behavior_format"].partition("{}")
    for tok in text.split():
        if is_behavior_token(tok):
            pending = tok[len(head):len(tok) - len(tail)]
        elif is_item_token(tok):
            events.append((item_id_of(tok), pending))
            pending = None
        # special tokens ([BOS], [SEP], ...) carry no event
    return History(events)


def _is_serialized(text: str) -> bool:
    return any(is_item_token(t) or is_behavior_token(t) for t in text.split())


HISTORY_FORMS = ("a list of item ids, a list of (item, behavior[, unix_seconds]) tuples or "
                 "{'item', 'behavior', 'timestamp'} dicts, or a serialized string such as 'i:50 i:172'")


def check_item_id(value: Any) -> str:
    """An item id as the tokenizer knows it: strings as given, integers in decimal. Anything else
    (floats, None, bytes, ...) is refused rather than silently becoming an unknown item."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"item ids are strings or integers; got {value!r} ({type(value).__name__})")
    item = str(value)
    if not item or any(ch.isspace() for ch in item):
        raise ValueError(f"item id {item!r} is empty or contains whitespace (ids are single tokens; "
                         "to pass several items, pass a list)")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in item):
        raise ValueError(f"item id {item[:40]!r} contains a control character")
    return item


def _time(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"an event's time is Unix seconds (a number); got {value!r}")
    return int(value)


def parse_history(history: Any) -> History:
    """One history in any accepted form -> :class:`History`."""
    if isinstance(history, History):
        return history
    if isinstance(history, str):
        if _is_serialized(history):
            return _parse_serialized(history)
        return History([(tok, None) for tok in history.replace(",", " ").split()])
    if not isinstance(history, (list, tuple)):
        raise ValueError(f"a history is {HISTORY_FORMS}; got {type(history).__name__} {history!r:.80}")
    events: list[tuple[str, str | None]] = []
    times: list[int | None] = []
    for event in history:
        if isinstance(event, tuple):
            if len(event) not in (2, 3):
                raise ValueError(f"an event tuple must be (item, behavior) or (item, behavior, "
                                 f"unix_seconds), got {event!r}")
            events.append((check_item_id(event[0]), None if event[1] is None else str(event[1])))
            times.append(_time(event[2]) if len(event) == 3 else None)
        elif isinstance(event, dict):
            if "item" not in event:
                raise ValueError(f"an event dict needs an 'item' key, got {event!r}")
            events.append((check_item_id(event["item"]), event.get("behavior")))
            times.append(_time(event.get("timestamp")))
        elif isinstance(event, list):
            raise ValueError(f"a history holds events, not lists (got {event!r:.80}); a batch is a list "
                             "of histories, one level deep")
        else:
            events.append((check_item_id(event), None))
            times.append(None)
    return History(events, times if any(t is not None for t in times) else None)


def is_batch(inputs: Any) -> bool:
    """A list of histories rather than one history: a list with a list in it (its strings are
    histories too), or a list of strings of which one holds several tokens (``"i:3 i:7"``). A list
    of single-token strings is one history of item ids, even ids that look like tokens
    (``["i:1", "i:2"]`` are the items ``i:1`` and ``i:2``)."""
    if not isinstance(inputs, list) or not inputs:
        return False
    if any(isinstance(x, list) for x in inputs):
        return True
    return (all(isinstance(x, str) for x in inputs)
            and any(len(x.split()) > 1 and _is_serialized(x) for x in inputs))


class AutoModelForNextBehavior:
    """Loader for the pipeline: ``AutoModelForMaskedLM`` for masked-item checkpoints (BERT4Rec),
    :class:`~behavior_lm.evaluation.fusion.BehaviorEnsembleModel` for ensembles,
    ``AutoModelForCausalLM`` for the rest. (Trying the causal class first would load a BERT4Rec
    checkpoint into ``BertLMHeadModel`` and silently predict with the wrong attention.)"""

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any):
        kwargs.pop("_from_pipeline", None)
        config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
        if isinstance(config, BehaviorEnsembleConfig):       # several runs fused into one
            return BehaviorEnsembleModel.from_pretrained(path, config=config, **kwargs)
        if isinstance(config, TextRankerConfig):             # a pretrained LM ranking items by their text
            return load_text_ranker(path)
        archs = getattr(config, "architectures", None) or []
        auto = AutoModelForMaskedLM if any(a.endswith("ForMaskedLM") for a in archs) else AutoModelForCausalLM
        return auto.from_pretrained(path, config=config, **kwargs)


class NextBehaviorPipeline(Pipeline):
    """Ranks the catalogue for the next event of each history.

    Call options: ``top_k`` (10), ``behavior`` (condition on the next behavior, e.g. ``"buy"``),
    ``exclude_seen`` (drop history items; default: what the model was evaluated with),
    ``return_behaviors`` (also return ``P(next behavior)``).

    Returns, per history, ``[{"item": raw_id, "score": probability, "behavior": name}, ...]``
    sorted by score; with ``return_behaviors`` a dict ``{"items": [...], "behaviors": [...]}``.
    ``score`` is the model's probability of the item (its share of the whole catalogue, not
    renormalised after excluding seen items).
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, top_k: int | None = None, behavior: str | None = None,
                             exclude_seen: bool | None = None, return_behaviors: bool | None = None,
                             **kwargs: Any):
        if kwargs:
            raise TypeError(f"next-behavior pipeline: unknown options {sorted(kwargs)}")
        pre, post = {}, {}
        if behavior is not None:
            pre["behavior"] = behavior
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
            post["top_k"] = top_k
        if exclude_seen is not None:
            post["exclude_seen"] = bool(exclude_seen)
        if return_behaviors is not None:
            post["return_behaviors"] = bool(return_behaviors)
        return pre, {}, post

    # ------------------------------------------------------------------ vocabulary views (cached)
    def _views(self) -> tuple[dict[str, int], dict[str, int], torch.Tensor]:
        """(vocab, behavior token ids, item mask): walking a 55k-item vocabulary on every call
        would cost more than the forward pass."""
        if getattr(self, "_cached_views", None) is None:
            vocab = self.tokenizer.get_vocab()
            head = self.model.get_output_embeddings()     # a text ranker scores items, not tokens
            size = head.out_features if head is not None else len(self.tokenizer)
            self._cached_views = (vocab, behavior_token_ids(self.tokenizer), item_mask(self.tokenizer, size))
        return self._cached_views

    # ------------------------------------------------------------------ metadata of the run
    @property
    def run_info(self) -> dict:
        """What ``behavior-lm train`` stored in the config (behaviors, seen filtering, task)."""
        return dict(getattr(self.model.config, "behavior_lm", None) or {})

    def item_side(self) -> tuple[str, dict[str, str]] | None:
        """``(column, item -> value)`` when the model was trained with item side tokens
        (``item_side.json`` next to the weights, locally or on the Hub), else None."""
        if getattr(self, "_cached_side", False) is False:
            self._cached_side = None
            if self.run_info.get("item_side"):
                path = Path(self.model.name_or_path) / SIDE_FILE
                if not path.is_file():
                    from huggingface_hub import hf_hub_download

                    path = Path(hf_hub_download(self.model.name_or_path, SIDE_FILE))
                table = json.loads(path.read_text())
                self._cached_side = (table["column"], table["values"])
        return self._cached_side

    def stream_format(self) -> StreamFormat:
        """The run's stream settings (``config.behavior_lm["stream"]``) with its item side table.
        Runs saved before the settings were recorded fall back to what the vocabulary shows."""
        if getattr(self, "_cached_format", None) is None:
            saved = dict(self.run_info.get("stream") or {})
            side = self.item_side()
            self._cached_format = StreamFormat(
                behaviors=bool(saved.get("behaviors", bool(self._views()[1]))),
                time_gaps=bool(saved.get("time_gaps", False)), session_gap=saved.get("session_gap"),
                item_side=side[0] if side else None, side_values=side[1] if side else None)
        return self._cached_format

    def knows_item(self, item: str) -> bool:
        """Whether ``item`` is in the run's catalogue (a token, a code, or a row of a text ranker)."""
        codes, ranker = self.semantic_ids(), self.text_ranker()
        if codes:
            return item in codes[0].index
        if ranker:
            return item in ranker[1]
        return item_token(item) in self._views()[0]

    def semantic_ids(self):
        """``(SemanticIds, CodeTrie)`` of a semantic-id run (``semantic_ids.json`` next to the
        weights, locally or on the Hub), else None."""
        if getattr(self, "_cached_sids", False) is False:
            self._cached_sids = None
            if self.run_info.get("semantic_ids"):
                from behavior_lm.tokenization.semantic_ids import CodeTrie, SemanticIds

                sids = SemanticIds.load(self.model.name_or_path)
                self._cached_sids = (sids, CodeTrie(sids, self.tokenizer.get_vocab()))
        return self._cached_sids

    def text_ranker(self):
        """``(catalogue, item index, item texts, serialization)`` of a text-ranker run, else None."""
        if getattr(self, "_cached_ranker", False) is False:
            self._cached_ranker = None
            if isinstance(self.model.config, TextRankerConfig) or is_text_ranker(self.model):
                from behavior_lm.models.text_ranker import ranker_catalogue, ranker_texts

                items, _ = ranker_catalogue(self.model.name_or_path)
                texts = ranker_texts(self.model.name_or_path)
                self._cached_ranker = (items, {i: j for j, i in enumerate(items)}, texts,
                                       dict(self.run_info.get("text_serialization") or {}))
        return self._cached_ranker

    def _rank_text_batch(self, batch: list[dict[str, Any]], top_k: int = 10, exclude_seen: bool | None = None,
                         return_behaviors: bool = False) -> list[Any]:
        """Text-ranker runs: the history's text through the model, the catalogue's softmax,
        seen items removed when the run was scored that way."""
        items, index, _, _ = self.text_ranker()
        if exclude_seen is None:
            exclude_seen = bool(self.run_info.get("filter_seen", False))
        ids, mask = self._padded(batch)
        with torch.no_grad():
            probs = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device)
                               ).logits.float().softmax(-1).cpu()
        out = []
        for m, p in zip(batch, probs):
            if exclude_seen and m["seen"]:
                p = p.clone()
                p[[index[i] for i in m["seen"]]] = 0.0
            scores, picked = p.topk(min(top_k, int((p > 0).sum())))
            out.append(self._ranking(m, [(items[j], s) for j, s in zip(picked.tolist(), scores.tolist())],
                                     return_behaviors))
        return out

    def _padded(self, batch: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's histories right-padded into one ``(ids, mask)`` pair."""
        rows = [m["input_ids"][0] for m in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return ids, mask

    def _ranking(self, request: dict[str, Any], ranked: list[tuple[str, float]], return_behaviors: bool) -> Any:
        """``[{"item", "score", "behavior"}, ...]`` for a one-behavior run's ranked ``(item, score)``
        pairs (semantic ids and the text ranker read one-behavior streams), with the empty-history
        note; with ``return_behaviors`` the dict form, the one behavior certain."""
        single = self.behavior_names()
        behavior = single[0] if len(single) == 1 else None
        rows = [{"item": item, "score": score, "behavior": behavior,
                 **({"note": EMPTY_NOTE} if request["empty"] else {})} for item, score in ranked]
        if request["empty"]:
            logger.warning("next-behavior: %s", EMPTY_NOTE)
        if not return_behaviors:
            return rows
        return {"items": rows, "behaviors": [{"behavior": behavior, "score": 1.0}] if behavior else []}

    def _generate_batch(self, batch: list[dict[str, Any]], top_k: int = 10, exclude_seen: bool | None = None,
                        return_behaviors: bool = False) -> list[Any]:
        """Semantic-id runs: constrained beam search after each history with as many beams as the
        run was scored with (at least ``top_k``), so the first ``top_k`` items are the harness's
        ranking; ``score`` is the model's probability of the item's code."""
        from behavior_lm.evaluation.generative import generate_items

        sids, trie = self.semantic_ids()
        if exclude_seen is None:
            exclude_seen = bool(self.run_info.get("filter_seen", False))
        ids, mask = self._padded(batch)
        exclude = [[sids.index[i] for i in m["seen"]] for m in batch] if exclude_seen else None
        beams = max(top_k, int(self.run_info["semantic_ids"].get("beams", top_k)))
        ranked = generate_items(self.model, ids, mask, trie, beams, self.tokenizer.pad_token_id, exclude)
        return [self._ranking(m, [(sids.items[j], math.exp(logp)) for j, logp in items[:top_k]], return_behaviors)
                for m, items in zip(batch, ranked)]

    def behavior_names(self) -> list[str]:
        names = list(self._views()[1])
        return names or list(self.run_info.get("behaviors") or [])

    # ------------------------------------------------------------------ Pipeline steps
    def __call__(self, inputs: Any, batch_size: int | None = None, **kwargs: Any):
        """One history -> its ranking; a list of histories -> a list of rankings, computed
        ``batch_size`` histories (default 16: the fastest on the quickstart model, scripts/bench_pipeline.py) per padded forward."""
        pre, _, post = self._sanitize_parameters(**kwargs)
        batch = is_batch(inputs)
        histories = [parse_history(h) for h in inputs] if batch else [parse_history(inputs)]
        size = 16 if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        # batches of similar lengths waste little on padding: the forward's cost is its tokens
        order = sorted(range(len(histories)), key=lambda i: len(histories[i].events))
        results: list[Any] = [None] * len(histories)
        for start in range(0, len(order), size):
            picked = order[start:start + size]
            chunk = [self.preprocess(histories[i], **pre) for i in picked]
            if self.semantic_ids() is not None:          # generative retrieval: beams of codes
                for i, out in zip(picked, self._generate_batch(chunk, **post)):
                    results[i] = out
                continue
            if self.text_ranker() is not None:           # item texts ranked by a pretrained LM
                for i, out in zip(picked, self._rank_text_batch(chunk, **post)):
                    results[i] = out
                continue
            for i, out in zip(picked, self._forward_batch(chunk)):
                results[i] = self.postprocess(out, **post)
        return results if batch else results[0]

    def preprocess(self, history: History, behavior: str | None = None) -> dict[str, Any]:
        vocab, stream_behaviors, _ = self._views()
        if behavior is not None and behavior not in stream_behaviors:
            known = self.behavior_names()
            if not (stream_behaviors == {} and known == [behavior]):
                raise ValueError(f"behavior {behavior!r} is not one this model knows; known: {known}")
            behavior = None  # the single behavior of a one-behavior log: nothing to condition on
        fmt = self.stream_format()
        times = history.timestamps or [None] * len(history.events)
        if (fmt.time_gaps or fmt.session_gap is not None) and history.events and None in times:
            raise ValueError("this model was trained with time-gap/session tokens: give every event "
                             "with its time, as (item, behavior, unix_seconds) or a dict with 'timestamp'")
        kept: list[tuple[str, str | None, int | None]] = []
        dropped_items, dropped_behaviors = [], []
        codes, ranker = self.semantic_ids(), self.text_ranker()
        for (item, b), t in zip(history.events, times):
            if not self.knows_item(item):
                dropped_items.append(item)
            elif stream_behaviors and b not in stream_behaviors:
                dropped_behaviors.append((item, b))
            else:
                kept.append((item, b, t))
        if dropped_items:
            logger.warning("next-behavior: dropped %d unknown item(s) from the history: %s",
                           len(dropped_items), ", ".join(map(str, dropped_items[:10])))
        if dropped_behaviors:
            logger.warning("next-behavior: dropped %d event(s) without a known behavior (this model "
                           "reads (item, behavior) pairs; known behaviors: %s): %s",
                           len(dropped_behaviors), list(stream_behaviors), dropped_behaviors[:10])
        # the same whole events, in the same layout, as the rows the harness scored
        n = len(kept)
        seq = UserSequence("request", [i for i, _, _ in kept], [b or "" for _, b, _ in kept],
                           [t or 0 for _, _, t in kept], [None] * n, [0] * n)
        seq = context_slice(seq, self.max_length, fmt)
        if ranker:                         # a text ranker reads the same items as text
            from behavior_lm.data.text_histories import history_only_text

            record = ranker[3]
            text = history_only_text(list(seq.items), ranker[2], record.get("verb", "watched"))
            self.tokenizer.truncation_side = "left"
            ids = self.tokenizer(text, truncation=True, max_length=record.get("max_length"))["input_ids"]
            return {"input_ids": torch.tensor([ids], dtype=torch.long), "behavior": behavior,
                    "seen": [i for i, _, _ in kept], "empty": not kept}
        tokens = fmt.serialize(seq).split()
        if codes:                          # a semantic-id run reads each item as its code tokens
            tokens = codes[0].expand(tokens)
        ids = encode_tokens(self.tokenizer, tokens)
        return {"input_ids": torch.tensor([ids], dtype=torch.long), "behavior": behavior,
                "seen": [i for i, _, _ in kept], "empty": not kept}

    @property
    def max_length(self) -> int:
        """The run's ``max_length`` (recorded in the config; older runs: the position limit)."""
        saved = self.run_info.get("max_length")
        if isinstance(saved, int):
            return saved
        cfg = self.model.config
        limits = [self.tokenizer.model_max_length]
        for name in ("n_positions", "max_position_embeddings"):
            if isinstance(getattr(cfg, name, None), int):
                limits.append(getattr(cfg, name))
        return min(limits)

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        return self._forward_batch([model_inputs])[0]

    def _forward_batch(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Histories right-padded into one batch; the scoring functions read each row at its own
        last real token, so a row scores exactly as it would alone (tested)."""
        _, behavior_ids, candidates = self._views()
        ids, mask = self._padded(batch)
        device = self.model.device
        out = []
        for behavior in dict.fromkeys(m["behavior"] for m in batch):   # one forward per condition
            picked = [i for i, m in enumerate(batch) if m["behavior"] == behavior]
            dists = next_event_distributions(self.model, self.tokenizer, ids[picked].to(device),
                                             mask[picked].to(device), behavior=behavior,
                                             behavior_ids=behavior_ids, candidates=candidates)
            out.extend(zip(picked, dists))
        return [{"dist": dist.to_cpu(), "seen": batch[i]["seen"], "empty": batch[i]["empty"],
                 "behavior": batch[i]["behavior"]} for i, dist in sorted(out, key=lambda x: x[0])]

    def postprocess(self, model_outputs: dict[str, Any], top_k: int = 10, exclude_seen: bool | None = None,
                    return_behaviors: bool = False):
        dist = model_outputs["dist"]
        if exclude_seen is None:
            exclude_seen = bool(self.run_info.get("filter_seen", False))
        probs = dist.items.clone()
        if exclude_seen and model_outputs["seen"]:
            vocab = self._views()[0]
            seen_ids = [vocab[item_token(i)] for i in model_outputs["seen"]]
            probs[torch.as_tensor(seen_ids, dtype=torch.long)] = 0.0
        k = min(top_k, int((probs > 0).sum()))
        scores, ids = probs.topk(k)
        single = self.behavior_names()
        tokens = self.tokenizer.convert_ids_to_tokens(ids.tolist())
        items = []
        for tok, tid, score in zip(tokens, ids.tolist(), scores.tolist()):
            if dist.item_behavior is not None:
                b = dist.behavior_names[int(dist.item_behavior[tid])]
            else:
                b = single[0] if len(single) == 1 else None
            row = {"item": item_id_of(tok), "score": score, "behavior": b}
            if model_outputs["empty"]:
                row["note"] = EMPTY_NOTE
            items.append(row)
        if model_outputs["empty"]:
            logger.warning("next-behavior: %s", EMPTY_NOTE)
        if not return_behaviors:
            return items
        if dist.behaviors is None:
            if dist.behavior_names:
                raise ValueError("return_behaviors: a masked-item model is not trained to predict the "
                                 "behavior token, so it has no next-behavior distribution")
            behaviors = [{"behavior": single[0], "score": 1.0}] if len(single) == 1 else []
        else:
            behaviors = sorted(({"behavior": n, "score": p} for n, p in dist.behaviors.items()),
                               key=lambda r: -r["score"])
        return {"items": items, "behaviors": behaviors}


def register() -> None:
    """Make ``pipeline("next-behavior", ...)`` available (idempotent)."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=NextBehaviorPipeline,
                                            pt_model=AutoModelForNextBehavior, type="text")

