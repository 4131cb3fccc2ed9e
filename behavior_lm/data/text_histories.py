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
