"""Shared test set-up: where datasets and caches live.

- ``BEHAVIOR_LM_DATA`` defaults to ``../shared/datasets`` when that folder exists (CI always has
  it); tests that need it skip with a stated reason on a user's machine without it.
- ``BEHAVIOR_LM_CACHE`` defaults to ``.cache/test`` in the repository, so ml-100k is fetched once
  per checkout, not once per test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

os.environ.setdefault("BEHAVIOR_LM_CACHE", str(REPO / ".cache" / "test"))
if SHARED_DATASETS.is_dir():
    os.environ.setdefault("BEHAVIOR_LM_DATA", str(SHARED_DATASETS))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


QUICKSTART = REPO / "recipes" / "quickstart" / "gpt2-ml-100k.yaml"
# a slice of ml-100k and a tiny model: every part is the real one, seconds per run
TINY = ["--max_users", "60", "--max_length", "32", "--hidden_size", "16", "--num_layers", "1",
        "--num_heads", "1", "--num_train_epochs", "2", "--per_device_train_batch_size", "16",
        "--warmup_steps", "0", "--dataloader_num_workers", "0", "--disable_tqdm", "true"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny GPT-2 run directory on ml-100k, shared by the tests that only read it."""
    from behavior_lm.cli.main import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", str(QUICKSTART), *TINY, "--output_dir", str(out)]) == 0
    return out


def cpu_trainer(model, model_args, tok, tmp_path: Path, **fields):
    """A two-step ``BehaviorTrainer`` on CPU over eight short histories of ``tok``'s items, with
    ``fields`` (BehaviorTrainingArguments fields such as ``fast_dropout``) set on stock arguments:
    what its constructor switches on for a CPU run is then in place on ``model``."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from behavior_lm.tokenization.behavior_tokenizer import item_mask
    from behavior_lm.training.run import make_collator
    from behavior_lm.training.trainer import BehaviorTrainer

    ids = tok.convert_tokens_to_ids
    train = Dataset.from_dict({"input_ids": [[tok.bos_token_id] + ids([f"i:{(u + j) % 12}" for j in range(6)])
                                             for u in range(8)]})
    targs = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                              report_to="none", remove_unused_columns=False, save_strategy="no",
                              disable_tqdm=True, use_cpu=True)
    for name, value in fields.items():
        setattr(targs, name, value)
    return BehaviorTrainer(model=model, args=targs, train_dataset=train, data_collator=make_collator(model_args, tok),
                           item_mask=item_mask(tok, model.get_output_embeddings().out_features))


def padded_histories(tok, side: str):
    """Three histories of 9, 4 and 1 items after [BOS], padded on ``side`` ('left' or 'right'):
    ``(input_ids, attention_mask)``."""
    import torch

    ids = tok.convert_tokens_to_ids
    rows = [[tok.bos_token_id] + ids([f"i:{j}" for j in range(n)]) for n in (9, 4, 1)]
    width = max(map(len, rows))
    padding = lambda r: [tok.pad_token_id] * (width - len(r))  # noqa: E731
    input_ids = torch.tensor([padding(r) + r if side == "left" else r + padding(r) for r in rows])
    return input_ids, (input_ids != tok.pad_token_id).long()


def shared_dataset(*parts: str) -> Path:
    """Path inside ../shared/datasets, or skip the test with the reason."""
    data = Path(os.environ.get("BEHAVIOR_LM_DATA", SHARED_DATASETS))
    path = data.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (research datasets with usage terms are not shipped; "
                    "set BEHAVIOR_LM_DATA to a folder that has them)")
    return path
