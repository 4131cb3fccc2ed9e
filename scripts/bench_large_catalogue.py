"""A synthetic catalogue of a million items: one training step with the full softmax and with the
sampled softmax, and full-ranking evaluation with whole logits and in item chunks; time and peak
RSS of each, every measurement in its own process (peak RSS only grows within a process).

    python scripts/bench_large_catalogue.py --items 1000000 --threads 2

The model is a stock GPT-2 (``GPT2LMHeadModel``, hidden 64, 2 layers, the recipes' size) with a
vocabulary of ``--items`` item tokens; the loss and the ranking are behavior-lm's own
(``SampledSoftmax.loss`` as the Trainer calls it, ``chunked_ranks`` as the Trainer's evaluation and
``behavior-lm evaluate`` call it, ``score_ranks`` for whole logits). Histories are random item
ids drawn from a Zipf popularity, so the numbers are about cost, not quality.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = ("train-full", "train-sampled", "eval-whole", "eval-chunked")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, items: int, batch: int, length: int, users: int, negatives: int, chunk: int,
            eval_batch: int) -> dict:
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from behavior_lm.evaluation.scoring import (chunked_ranks, next_token_features, next_token_scores, output_layer,
                                                score_ranks)
    from behavior_lm.training.sampled_softmax import SampledSoftmax

    torch.manual_seed(0)
    vocab = items + 4                                   # [PAD] [BOS] [EOS] [UNK] + items
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=length, n_embd=64, n_layer=2, n_head=1,
                                       activation_function="gelu_pytorch_tanh"))
    rng = np.random.default_rng(0)
    pop = 1.0 / np.arange(1, items + 1) ** 0.9
    pop /= pop.sum()

    def draw(rows: int) -> torch.Tensor:
        return torch.as_tensor(rng.choice(items, size=(rows, length), p=pop) + 4)

    base = peak_rss_mb()
    if mode.startswith("train"):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        items_mask = torch.zeros(vocab, dtype=torch.bool)
        items_mask[4:] = True
        sampler = SampledSoftmax.build(items_mask, "uniform", negatives, seed=0, pad_token_id=0)
        times = []
        for step in range(4):                            # the first step allocates Adam's state
            ids = draw(batch)
            start = time.perf_counter()
            if mode == "train-full":
                loss = model(input_ids=ids, labels=ids).loss
            else:
                out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
                loss = sampler.loss(model, out.hidden_states[-1], ids, step)
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - start)
        seconds, unit = float(np.median(times[1:])), "s/step"
    else:
        model.eval()
        candidates = torch.zeros(vocab, dtype=torch.bool)
        candidates[4:] = True
        weight, bias = output_layer(model)
        start = time.perf_counter()
        ranks = []
        for first in range(0, users, eval_batch):
            rows = min(eval_batch, users - first)
            ids = draw(rows)
            history, targets, seen = ids[:, :-1], ids[:, -1], ids[:, :-1]
            mask = torch.ones_like(history)
            with torch.no_grad():
                if mode == "eval-whole":
                    logits = next_token_scores(model, history, mask)          # (B, V): the whole catalogue
                    r, _ = score_ranks(logits, targets, candidates, seen)
                else:
                    features = next_token_features(model, history, mask)
                    r, _ = chunked_ranks(features, weight, bias, targets, candidates, seen, chunk)
            ranks.append(r)
        seconds, unit = (time.perf_counter() - start) / users * 1000, "ms/user"
    return {"mode": mode, "items": items, "time": round(seconds, 4), "unit": unit,
            "peak_rss_mb": round(peak_rss_mb()), "model_rss_mb": round(base)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=32, help="training sequences per step")
    p.add_argument("--length", type=int, default=50)
    p.add_argument("--users", type=int, default=1024, help="users ranked in the evaluation measurement")
    p.add_argument("--eval_batch", type=int, default=128)
    p.add_argument("--negatives", type=int, default=3000)
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.one:
        print(json.dumps(measure(a.one, a.items, a.batch, a.length, a.users, a.negatives, a.chunk, a.eval_batch)))
        return
    rows = []
    for mode in a.modes:
        cmd = [sys.executable, __file__, "--one", mode, *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["?"]
            rows.append({"mode": mode, "items": a.items, "time": None, "unit": "",
                         "peak_rss_mb": None, "error": f"exit {done.returncode}: {tail[0][:120]}"})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"\n{a.items:,} items, GPT-2 64x2, training batch {a.batch} x {a.length}, {a.negatives} negatives, "
          f"evaluation batch {a.eval_batch}, chunk {a.chunk}, {a.threads} threads\n")
    print("| measurement | time | peak RSS (MB) | of which model + data before the step (MB) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        t = f"{r['time']} {r['unit']}" if r.get("time") is not None else r.get("error", "")
        print(f"| {r['mode']} | {t} | {r.get('peak_rss_mb')} | {r.get('model_rss_mb', '')} |")


if __name__ == "__main__":
    main()
