"""Histories as text, for pretrained language models (``model_type: pretrained``).

A sequence-classification example of ``next-class`` / ``next-rating`` is a history and a target
item (``[CLS] i:1 i:50 ... [SEP] i:181 [SEP]`` in the item vocabulary). For a pretrained encoder the
same example is written as text from the items' titles and genres:

    watched: Toy Story (1995). Animation, Children's, Comedy; Heat (1995). Action, Crime; ...
    || next: Jumanji (1995). Adventure, Children's, Fantasy

and tokenized by the encoder's own tokenizer, truncated from the left so the most recent events
and the target are kept. The rows are built from the prepared id rows themselves (same users,
same histories, same labels, same split), so the text model and the id models are scored on
exactly the same examples by the same harness. An item without text is written as ``item <id>``.
"""
from __future__ import annotations

from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from behavior_lm.tokenization.behavior_tokenizer import grammar, is_item_token

TEXT_TEMPLATE = {"history": "{verb}: {items}", "separator": " || ", "target": "next: {item}",
                 "item_separator": "; "}


def item_phrase(item: str, texts: dict[str, str]) -> str:
    return texts.get(item) or f"item {item}"


def history_text(history: list[str], target: str, texts: dict[str, str], verb: str = "watched") -> str:
    """The text of one example (see the module docstring)."""
    items = TEXT_TEMPLATE["item_separator"].join(item_phrase(i, texts) for i in history)
    return (TEXT_TEMPLATE["history"].format(verb=verb, items=items) + TEXT_TEMPLATE["separator"]
            + TEXT_TEMPLATE["target"].format(item=item_phrase(target, texts)))


def items_of_row(input_ids: list[int], id_to_token: dict[int, str]) -> list[str]:
    """The raw item ids of an id row, in order (the last one is the pair's target item)."""
    prefix = grammar()["item_prefix"]
    return [id_to_token[t][len(prefix):] for t in input_ids
            if t in id_to_token and is_item_token(id_to_token[t])]


def text_task_datasets(dsd: DatasetDict, tokenizer: PreTrainedTokenizerBase, texts: dict[str, str],
                       text_tokenizer: PreTrainedTokenizerBase, max_length: int,
                       verb: str = "watched") -> tuple[DatasetDict, dict]:
    """The id rows of a sequence task rewritten as text and tokenized by ``text_tokenizer``
    (left truncation to ``max_length``). Returns the datasets and coverage counts."""
    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    text_tokenizer.truncation_side = "left"
    parts, seen, covered = {}, set(), set()
    for name, ds in dsd.items():
        strings = []
        for row in ds["input_ids"]:
            items = items_of_row(row, id_to_token)
            seen.update(items)
            covered.update(i for i in items if i in texts)
            strings.append(history_text(items[:-1], items[-1], texts, verb))
        enc = text_tokenizer(strings, truncation=True, max_length=max_length)
        parts[name] = Dataset.from_dict({"user_id": ds["user_id"], "input_ids": enc["input_ids"],
                                         "labels": ds["labels"]})
    return DatasetDict(parts), {"items": len(seen), "items_with_text": len(covered), "max_length": max_length,
                                "verb": verb, "example": strings[0] if strings else ""}


def history_only_text(history: list[str], texts: dict[str, str], verb: str = "watched") -> str:
    """A history without a target (``watched: A; B; C``): what a next-item text ranker reads."""
    items = TEXT_TEMPLATE["item_separator"].join(item_phrase(i, texts) for i in history)
    return TEXT_TEMPLATE["history"].format(verb=verb, items=items)


def next_item_text_datasets(dsd: DatasetDict, tokenizer: PreTrainedTokenizerBase, texts: dict[str, str],
                            text_tokenizer: PreTrainedTokenizerBase, catalogue: list[str], max_length: int,
                            verb: str = "watched", examples_per_window: int = 8, seed: int = 0
                            ) -> tuple[DatasetDict, dict]:
    """A next-item split's id rows as text for a ranker over ``catalogue`` (item index = position).

    - ``train``: from each training window, up to ``examples_per_window`` positions (seeded) become
      ``(text of the items before it, index of the item at it)`` examples; the window's newest item
      is always one of them (the position the ranking asks about);
    - ``validation`` / ``test``: each row's history as text, ``target`` and ``seen`` as item indices,
      the same users and targets the id models are scored on.

    Texts are tokenized by ``text_tokenizer`` and cut from the left (recent items stay)."""
    import random

    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    index = {item: j for j, item in enumerate(catalogue)}
    text_tokenizer.truncation_side = "left"
    rng = random.Random(seed)
    parts = {}
    strings: list[str] = []
    for name, ds in dsd.items():
        strings, columns = [], {"user_id": []}
        if "target" in ds.column_names:
            columns.update(target=[], seen=[])
            for row in ds:
                items = items_of_row(row["input_ids"], id_to_token)
                strings.append(history_only_text(items, texts, verb))
                columns["user_id"].append(row["user_id"])
                columns["target"].append(index.get(id_to_token.get(row["target"], "")[len(grammar()["item_prefix"]):], -1))
                columns["seen"].append([index[i] for i in items if i in index])
        else:
            columns["labels"] = []
            for user, row in zip(ds["user_id"], ds["input_ids"]):
                items = items_of_row(row, id_to_token)
                positions = list(range(1, len(items)))
                if not positions:
                    continue
                picked = {positions[-1], *rng.sample(positions, min(examples_per_window, len(positions)) - 1)} \
                    if examples_per_window > 0 else set(positions)
                for p in sorted(picked):
                    strings.append(history_only_text(items[:p], texts, verb))
                    columns["user_id"].append(user)
                    columns["labels"].append(index[items[p]])
        enc = text_tokenizer(strings, truncation=True, max_length=max_length)
        parts[name] = Dataset.from_dict({**columns, "input_ids": enc["input_ids"]})
    covered = sum(1 for i in catalogue if i in texts)
    return DatasetDict(parts), {"items": len(catalogue), "items_with_text": covered, "max_length": max_length,
                                "verb": verb, "examples_per_window": examples_per_window,
                                "example": strings[0] if strings else ""}
