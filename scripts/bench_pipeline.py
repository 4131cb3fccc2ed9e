"""Latency of pipeline("next-behavior") for one history at a time (the interactive case).

Usage:
    python scripts/bench_pipeline.py RUN_DIR [--calls 1000] [--top_k 10] [--threads 1] [--batch_sizes 1 16 64 256]

Histories are the real test-split histories of the run's users (cycled), so lengths follow the
data. Prints median and p99 over the calls, and, as a same-process baseline, the bare model
forward on the same inputs (what the pipeline adds is parsing, tokenizing and the top-k).
Then the batched case: the same ``--calls`` histories in one call per ``--batch_sizes`` value
(``pipe(histories, batch_size=B)``), back to back with the loop of single calls: histories per
second and the speed-up over single calls.

Semantic-id runs decode with constrained beam search, so "bare forward" (one forward of the history)
is what generation adds to; text-ranker runs' bare forward is the encoder and the catalogue scores.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pathlib import Path

    from transformers import pipeline

    import behavior_lm  # noqa: F401
    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.evaluation.scoring import next_token_scores
    from behavior_lm.inference.pipelines import parse_history
    from behavior_lm.models.auto import template_for
    from behavior_lm.arguments import DataArguments

    run = Path(args.run_dir)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    data = prepare_data(DataArguments.of_run(run),
                        template=template_for(recipe.get("model_type", "gpt2")))
    tok = data.tokenizer
    histories = []
    for ids in data.datasets["test"]["input_ids"]:
        tokens = tok.convert_ids_to_tokens(ids)
        histories.append([t[2:] for t in tokens if t.startswith("i:")])
    pipe = pipeline("next-behavior", model=str(run))
    for h in histories[:20]:                                            # warm-up
        pipe(h, top_k=args.top_k)
    times = []
    for n in range(args.calls):
        h = histories[n % len(histories)]
        start = time.perf_counter()
        pipe(h, top_k=args.top_k)
        times.append((time.perf_counter() - start) * 1e3)
    base = []
    for n in range(args.calls):
        h = histories[n % len(histories)]
        ids = pipe.preprocess(parse_history(h))["input_ids"]
        start = time.perf_counter()
        if pipe.text_ranker() is not None:       # a text ranker's forward is its catalogue scores
            with torch.no_grad():
                pipe.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        else:                                    # semantic ids: one forward of the history (no decoding)
            next_token_scores(pipe.model, ids, torch.ones_like(ids))
        base.append((time.perf_counter() - start) * 1e3)
    lengths = [pipe.preprocess(parse_history(histories[n % len(histories)]))["input_ids"].shape[1] - 1
               for n in range(args.calls)]
    print(f"model: {run} ({type(pipe.model).__name__}), {args.calls} single-history calls, top_k={args.top_k}, "
          f"torch threads={args.threads}, history length median {statistics.median(lengths):g} events")
    print("| what | median (ms) | p99 (ms) |")
    print("|---|---:|---:|")
    print(f"| pipeline call | {statistics.median(times):.2f} | {percentile(times, 99):.2f} |")
    print(f"| bare forward (same inputs, same process) | {statistics.median(base):.2f} | {percentile(base, 99):.2f} |")
    print(f"ratio pipeline / bare forward (medians): {statistics.median(times) / statistics.median(base):.2f}")

    batch = [histories[n % len(histories)] for n in range(args.calls)]
    single_rate = args.calls / (sum(times) / 1e3)
    print(f"\n{args.calls} histories in one call, by batch_size (single calls above: {single_rate:,.0f} histories/s)")
    print("| batch_size | seconds | histories/s | speed-up over single calls |")
    print("|---:|---:|---:|---:|")
    for size in args.batch_sizes:
        start = time.perf_counter()
        pipe(batch, top_k=args.top_k, batch_size=size)
        seconds = time.perf_counter() - start
        print(f"| {size} | {seconds:.2f} | {args.calls / seconds:,.0f} | {args.calls / seconds / single_rate:.1f}x |")


if __name__ == "__main__":
    main()
