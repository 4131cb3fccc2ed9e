"""Where a next-item model loses to the first-order Markov floor: test NDCG@10 of a finished run and
of the floor, split by what the floor knows about each user's last item.

Buckets (counted on the run's own training rows, as the floor counts them):
- "seen transition": the pair (last history item -> target) occurs in training;
- "unseen transition": the last item has successors in training, but not this target;
- "no successors": the last item is never followed by anything in training (the floor falls back
  to popularity).

    python scripts/markov_gap.py runs/beauty-sweep/llama-h64-tied-true
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import behavior_lm  # noqa: F401  (registers our model classes)
from behavior_lm.arguments import DataArguments
from behavior_lm.data.pipeline import prepare_data
from behavior_lm.evaluation.harness import markov_scorer, model_scorer, rank_dataset
from behavior_lm.evaluation.metrics import ranking_metrics
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.tokenization.behavior_tokenizer import item_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    args = parser.parse_args()
    run = Path(args.run_dir)
    saved = json.loads((run / "metrics.json").read_text())
    protocol = EvalProtocol.from_dict(saved["protocol"])
    data = prepare_data(DataArguments.of_run(run), template="causal")
    tokenizer = AutoTokenizer.from_pretrained(run)
    model = AutoModelForCausalLM.from_pretrained(run)
    rows = data.datasets[args.split]
    vocab = model.get_output_embeddings().out_features
    candidates = item_mask(tokenizer, vocab)
    model_ranks = rank_dataset(model_scorer(model, tokenizer, protocol), rows, tokenizer, protocol, vocab_size=vocab)
    markov_ranks = rank_dataset(markov_scorer(data.datasets["train"], vocab, candidates), rows, tokenizer, protocol,
                                vocab_size=vocab)

    is_item = candidates.numpy()
    pairs: set[tuple[int, int]] = set()
    followed: set[int] = set()
    for ids in data.datasets["train"]["input_ids"]:
        seq = np.asarray(ids)[is_item[np.asarray(ids)]]
        pairs.update(zip(seq[:-1].tolist(), seq[1:].tolist()))
        followed.update(seq[:-1].tolist())
    bucket = []
    for ids, target in zip(rows["input_ids"], rows["target"]):
        last = int(np.asarray(ids)[is_item[np.asarray(ids)]][-1])
        bucket.append("seen transition" if (last, target) in pairs else
                      "unseen transition" if last in followed else "no successors")
    bucket = np.asarray(bucket)
    print(f"{run} ({args.split}, {len(bucket):,} users)\n")
    print("| last item -> target | users | share | model NDCG@10 | Markov NDCG@10 | model HR@10 | Markov HR@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("seen transition", "unseen transition", "no successors", "all"):
        pick = np.ones(len(bucket), bool) if name == "all" else bucket == name
        m, f = ranking_metrics(model_ranks[pick], [10]), ranking_metrics(markov_ranks[pick], [10])
        print(f"| {name} | {pick.sum():,} | {pick.mean():.1%} | {m['ndcg@10']:.4f} | {f['ndcg@10']:.4f} | "
              f"{m['hr@10']:.4f} | {f['hr@10']:.4f} |")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
