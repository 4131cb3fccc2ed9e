"""The cold-start protocol: a share of items never seen in training, scored as test targets.

``cold_items: 0.1`` in a recipe picks 10% of the catalogue (seeded by ``cold_seed``, independent
of the order of the log) and removes every event of those items from every user's sequence,
except a user's last event (the leave-one-out test target) when it is one. Training and
validation therefore never see a cold item, as input or as target; the training loss leaves
them out of its softmax too (they do not exist yet when the model is trained), and at test time
they are ranked over the full catalogue like every other item. Test metrics are reported on all
users and separately on users whose target is warm or cold (``test_warm``, ``test_cold``).

An ID-only model has nothing to rank a cold item by (its row is its random initialisation); a
model whose item rows come from text (``item_text``) places it by what it is.
"""
from __future__ import annotations

import hashlib

import torch

from behavior_lm.data.preprocess import UserSequence
from behavior_lm.errors import RecipeError
from behavior_lm.tokenization.behavior_tokenizer import item_token


def pick_cold_items(catalogue: set[str], share: float, seed: int) -> set[str]:
    """``round(share * len(catalogue))`` items, chosen by a seeded hash of each id: the same ids
    are cold whatever the order of the log or the platform."""
    if not 0.0 < share < 1.0:
        raise RecipeError(f"cold_items must be a share in (0, 1), got {share}")
    n = round(share * len(catalogue))
    if n == 0:
        raise RecipeError(f"cold_items {share} of {len(catalogue)} items rounds to no cold item; raise the share")
    ranked = sorted(catalogue, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:n])


def withhold_cold_items(sequences: list[UserSequence], cold: set[str]) -> tuple[list[UserSequence], dict]:
    """Each user's sequence without its cold events, except its last event; users left with
    fewer than 3 events (leave-one-out needs a train, a validation and a test event) are dropped.
    Returns the sequences and counts for the run's records."""
    out: list[UserSequence] = []
    removed = dropped = cold_targets = 0
    for seq in sequences:
        last = len(seq) - 1
        keep = [i for i, item in enumerate(seq.items) if i == last or item not in cold]
        removed += len(seq) - len(keep)
        if len(keep) < 3:
            dropped += 1
            continue
        cold_targets += seq.items[last] in cold
        out.append(seq.pick(keep))
    return out, {"cold_items": len(cold), "events_removed": removed, "users_dropped": dropped,
                 "test_users_with_cold_target": cold_targets}


def cold_token_ids(tokenizer, data_info: dict) -> torch.Tensor | None:
    """Token ids of the cold items of a cold-start run (``cold_items``), else None."""
    cold = data_info.get("cold_start")
    if not cold:
        return None
    vocab = tokenizer.get_vocab()
    return torch.tensor(sorted(vocab[item_token(i)] for i in cold["items"]), dtype=torch.long)


def cold_start_subsets(test, cold_ids: torch.Tensor | None) -> dict:
    """``{"test_warm": rows, "test_cold": rows}``: test users by whether their target is cold."""
    if cold_ids is None:
        return {}
    cold = set(cold_ids.tolist())
    parts = {"test_warm": test.filter(lambda t: t not in cold, input_columns="target"),
             "test_cold": test.filter(lambda t: t in cold, input_columns="target")}
    return {name: part for name, part in parts.items() if part.num_rows}
