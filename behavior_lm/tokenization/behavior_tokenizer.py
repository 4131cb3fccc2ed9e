"""The behavior tokenizer: the item vocabulary as a Hugging Face fast tokenizer.

Built with `tokenizers` (WordLevel model, whitespace pre-tokenizer, template post-processor) and
wrapped in the stock fast tokenizer class, so ``save_pretrained`` writes it next to every model and
``AutoTokenizer.from_pretrained(run_dir)`` loads it with no custom code. The grammar (special
tokens, token formats, templates) is data in ``tokenizer/grammar.json`` of the repository.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from typing import TYPE_CHECKING

if TYPE_CHECKING:      # torch and transformers load where a tokenizer or mask is built, not for token names
    import torch
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from behavior_lm.errors import DataError

GRAMMAR_PATH = Path(__file__).with_name("grammar.json")
SIDE_FILE = "item_side.json"  # item -> side attribute, saved next to a tokenizer that has side tokens


@lru_cache(maxsize=1)
def grammar() -> dict:
    """The token grammar (special tokens, formats, templates) from ``grammar.json``."""
    return json.loads(GRAMMAR_PATH.read_text())


def item_token(item_id: str) -> str:
    """``"42"`` -> ``"i:42"``."""
    return f"{grammar()['item_prefix']}{item_id}"


def behavior_token(behavior: str) -> str:
    """``"buy"`` -> ``"<buy>"``."""
    return grammar()["behavior_format"].format(behavior)


def side_token(column: str, value: str) -> str:
    """``("category", "2520377")`` -> ``"category:2520377"``: an item's side attribute."""
    return grammar()["side_format"].format(column, value)


def is_item_token(token: str) -> bool:
    return token.startswith(grammar()["item_prefix"])


def item_id_of(token: str) -> str:
    """``"i:42"`` -> ``"42"`` (the raw id the user knows)."""
    return token[len(grammar()["item_prefix"]):]


def is_behavior_token(token: str) -> bool:
    head, _, tail = grammar()["behavior_format"].partition("{}")
    return token.startswith(head) and token.endswith(tail) and len(token) > len(head) + len(tail)


def gap_tokens() -> list[str]:
    """``[gap:1m] [gap:10m] ...``: one per log-spaced bucket of ``grammar.json``, smallest first."""
    g = grammar()
    return [g["gap_format"].format(name) for name, _ in sorted(g["gap_buckets"].items(), key=lambda kv: kv[1])]


def gap_token(seconds: float) -> str | None:
    """The bucket token for the time since the previous event (``None`` below the smallest)."""
    g = grammar()
    best = None
    for name, floor in sorted(g["gap_buckets"].items(), key=lambda kv: kv[1]):
        if seconds >= floor:
            best = g["gap_format"].format(name)
    return best


def build_tokenizer(
    items: Iterable[str],
    behaviors: Sequence[str] = (),
    *,
    template: str = "causal",
    max_length: int = 200,
    extra_tokens: Sequence[str] = (),
) -> PreTrainedTokenizerFast:
    """Build the tokenizer whose vocabulary is ``specials + behaviors + items``.

    ``items`` may repeat (an event stream): the vocabulary orders items by frequency, ties by
    first appearance, so the most popular items get the smallest ids (deterministic, readable).
    Pass ``behaviors`` only when the log has more than one kind; with one kind the streams carry
    no behavior tokens. ``extra_tokens`` (time-gap buckets, the session token) come between the
    behaviors and the items; they are neither items nor behaviors.
    """
    g = grammar()
    specials = list(g["special_tokens"].values())
    counts = Counter()
    first_seen: dict[str, int] = {}
    for item in items:
        item = str(item)
        if item not in first_seen:
            if not item or any(ch.isspace() for ch in item):
                raise DataError(f"item id {item!r} is empty or contains whitespace; "
                                "item ids must be single tokens", field="item_id")
            first_seen[item] = len(first_seen)
        counts[item] += 1
    if not counts:
        raise DataError("cannot build a tokenizer from an empty item catalogue", field="item_id")
    ordered = sorted(counts, key=lambda i: (-counts[i], first_seen[i]))
    tokens = (specials + [behavior_token(b) for b in behaviors] + list(extra_tokens)
              + [item_token(i) for i in ordered])
    return vocabulary_tokenizer(tokens, template=template, max_length=max_length)


def vocabulary_tokenizer(tokens: Sequence[str], *, template: str = "causal",
                         max_length: int = 200) -> PreTrainedTokenizerFast:
    """A fast tokenizer whose vocabulary is exactly ``tokens`` (the special tokens first), with the
    grammar's template and left truncation: what :func:`build_tokenizer` wraps around an item
    catalogue, and what a semantic-id run wraps around its code tokens
    (:mod:`behavior_lm.tokenization.semantic_ids`)."""
    g = grammar()
    vocab = {tok: idx for idx, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("vocabulary_tokenizer: tokens repeat")
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=g["special_tokens"]["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    spec = g["templates"][template]
    spec = {"single": spec} if isinstance(spec, str) else dict(spec)   # optional "pair" template
    used = sorted({t for text in spec.values() for t in text.split() if t in vocab})
    backend.post_processor = processors.TemplateProcessing(
        **spec, special_tokens=[(t, vocab[t]) for t in used]
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=max_length,
        truncation_side="left",  # keep the most recent events
        padding_side="right",
        **g["special_tokens"],
    )
    return tokenizer


# --------------------------------------------------------------------- encoding by id
def _template(tokenizer: PreTrainedTokenizerBase) -> dict[str, list[tuple[str, str]]]:
    """The tokenizer's own post-processing template, read from its backend: ``{"single": [...],
    "pair": [...]}`` with ``("special", "[BOS]")`` / ``("sequence", "A")`` parts."""
    cached = getattr(tokenizer, "_behavior_lm_template", None)
    if cached is None:
        spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("post_processor") or {}
        cached = {}
        for name in ("single", "pair"):
            parts = []
            for part in spec.get(name) or []:
                if "SpecialToken" in part:
                    parts.append(("special", part["SpecialToken"]["id"]))
                else:
                    parts.append(("sequence", part["Sequence"]["id"]))
            cached[name] = parts
        tokenizer._behavior_lm_template = cached
    return cached


def encode_tokens(tokenizer: PreTrainedTokenizerBase, first: Sequence[str],
                  second: Sequence[str] | None = None, max_length: int | None = None) -> list[int]:
    """Token strings -> ids by vocabulary lookup, wrapped in the tokenizer's template
    (``[BOS] A``, ``[CLS] A [SEP] B [SEP]``).

    Never re-tokenizes text: an item whose raw id looks like a special token (``i:[PAD]``) or
    holds brackets, NUL bytes or emoji maps to its own id, where ``tokenizer(text)`` would split
    the special token out of it. ``max_length`` drops the oldest tokens of ``first`` (left
    truncation keeps the most recent events), as the tokenizer's ``only_first`` truncation did.
    """
    template = _template(tokenizer)["pair" if second is not None else "single"]
    if not template:
        raise ValueError("the tokenizer has no template for this input (pair without a pair template)")
    specials = sum(1 for kind, _ in template if kind == "special")
    first = list(first)
    if max_length is not None:
        room = max_length - specials - (len(second) if second is not None else 0)
        first = first[max(0, len(first) - max(room, 0)):]
    ids: list[int] = []
    for kind, name in template:
        if kind == "special":
            ids.append(tokenizer.convert_tokens_to_ids(name))
        else:
            ids.extend(tokenizer.convert_tokens_to_ids(list(first if name == "A" else second)))
    return ids


# --------------------------------------------------------------------- vocabulary views
def item_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of all item tokens, ascending. Ranking is over exactly these."""
    return sorted(i for t, i in tokenizer.get_vocab().items() if is_item_token(t))


def catalogue(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The raw item ids of the vocabulary in token-id order (most popular first): the item order of
    a semantic-id table and of a text ranker's output layer."""
    return [item_id_of(t) for t in tokenizer.convert_ids_to_tokens(item_token_ids(tokenizer))]


def behavior_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """``{"buy": id, ...}`` for the behavior tokens in the vocabulary (empty for one-kind logs)."""
    head, _, tail = grammar()["behavior_format"].partition("{}")
    out = {t[len(head):len(t) - len(tail)]: i for t, i in tokenizer.get_vocab().items()
           if is_behavior_token(t)}
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def item_mask(tokenizer: PreTrainedTokenizerBase, vocab_size: int | None = None) -> torch.Tensor:
    """Boolean ``(vocab_size,)``: True at item tokens. ``vocab_size`` may exceed the tokenizer
    (models pad their embedding matrices); the extra rows are never items."""
    n = vocab_size if vocab_size is not None else len(tokenizer)
    import torch

    mask = torch.zeros(n, dtype=torch.bool)
    mask[item_token_ids(tokenizer)] = True
    return mask
