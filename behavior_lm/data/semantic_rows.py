"""A next-item split's id rows rewritten in semantic-id code tokens (``semantic_ids: true``).

The rows are the prepared id rows themselves (same users, same windows, same histories, same
targets), each item token replaced by its code tokens (:meth:`SemanticIds.expand`), so a
semantic-id model and an id model are trained and scored on exactly the same split. Ranking rows
keep ``target`` and ``seen`` as item *indices* of the code table (there are no item tokens to
point at); decoding maps generated codes to the same indices.

Layout: an id row of ``1 + n`` tokens becomes ``1 + n x code_length`` tokens. A training window
of ``window_events`` items puts a target at every code position of every event; a scored history
holds at most ``window_events - 1`` items, so the ``code_length`` tokens generated after it sit at
positions that training used as targets, as for the id model (``data/streams.py``).
"""
from __future__ import annotations

from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from behavior_lm.errors import RecipeError
from behavior_lm.tokenization.behavior_tokenizer import (grammar, is_item_token, item_id_of,
                                                         vocabulary_tokenizer)
from behavior_lm.tokenization.semantic_ids import SemanticIds


def code_tokenizer(sids: SemanticIds, template: str, max_length: int) -> PreTrainedTokenizerBase:
    """The tokenizer of a semantic-id model: the special tokens and the code tokens, nothing else
    (its size does not grow with the catalogue)."""
    specials = list(grammar()["special_tokens"].values())
    return vocabulary_tokenizer(specials + sids.vocabulary(), template=template,
                                max_length=sids.positions(max_length))


def check_stream(stream: dict) -> None:
    """Semantic ids replace one item token per event; streams with behavior, time-gap, session or
    side tokens would need codes interleaved with them, which is not built."""
    extras = [k for k in ("behaviors", "time_gaps", "item_side") if stream.get(k)]
    if stream.get("session_gap") is not None:
        extras.append("session_gap")
    if extras:
        raise RecipeError(f"semantic_ids: streams of one item token per event only; this recipe's streams "
                          f"also carry {', '.join(extras)} tokens")


def code_rows(dsd: DatasetDict, tokenizer: PreTrainedTokenizerBase, sids: SemanticIds,
              codes: PreTrainedTokenizerBase) -> DatasetDict:
    """``dsd`` (next-item id rows of ``tokenizer``) in the code tokens of ``codes``."""
    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()}
    code_vocab = codes.get_vocab()

    def index_of(token_id: int) -> int:
        token = id_to_token.get(int(token_id), "")
        return sids.index.get(item_id_of(token), -1) if is_item_token(token) else -1

    def convert(row: list[int]) -> list[int]:
        return [code_vocab[t] for t in sids.expand([id_to_token[i] for i in row])]

    parts = {}
    for name, ds in dsd.items():
        columns = {"user_id": ds["user_id"], "input_ids": [convert(r) for r in ds["input_ids"]]}
        if "target" in ds.column_names:
            columns["target"] = [index_of(t) for t in ds["target"]]
            columns["seen"] = [[j for j in (index_of(s) for s in row) if j >= 0] for row in ds["seen"]]
        parts[name] = Dataset.from_dict(columns)
    return DatasetDict(parts)
