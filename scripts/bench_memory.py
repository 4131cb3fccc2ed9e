"""Resident memory over many training steps: does a long run's RSS stay flat?

Usage:
    python scripts/bench_memory.py [--dataset ml-1m] [--models bert4rec llama gpt2 gru]
                                   [--steps 160] [--every 20] [--overrides '--bf16 true']

For each model type a fresh subprocess (one thread) prepares the recipe's data (cached), builds
the model and runs ``--steps`` optimizer steps on real training batches, computing the loss as the
Trainer does (the fused softmax, or the stock loss with ``--fused_softmax false``; bf16 autocast
with ``--bf16 true``), and reads its resident set size (``/proc/self/statm``) every ``--every``
steps. ``keep_freed_memory`` is off, so that glibc's defaults are measured. It prints the RSS
series and the growth per step between the first reading and the last, in a markdown table.

Why: a long ML-1M BERT4Rec run held 20 GB (docs/performance.md, "Memory of long runs"): oneDNN
builds and caches a primitive per distinct tensor shape, and the fused loss gave its GELU (and,
under bf16, its matmuls) a new row count in every batch. A flat series here is the check.
ML-1M needs BEHAVIOR_LM_DATA.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import recipe_for  # noqa: E402


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(dataset: str, model_type: str, steps: int, every: int, overrides: list[str]) -> dict:
    """RSS (MB) after every ``every`` steps of the recipe's training step."""
    import torch
    from torch.utils.data import DataLoader

    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.models.auto import build_model, template_for
    from behavior_lm.training.fused_softmax import hidden_states_forward
    from behavior_lm.training.recipes import parse_recipe
    from behavior_lm.training.run import fused_output_loss, make_collator
    from behavior_lm.training.trainer import apply_cpu_training_settings

    path, extra = recipe_for(dataset, model_type)
    data_args, model_args, training_args, _ = parse_recipe(
        path, [*extra, "--keep_freed_memory", "false", *overrides, "--output_dir", "/tmp/bench-memory"])
    torch.manual_seed(0)
    data = prepare_data(data_args, template=template_for(model_args.model_type))
    model = build_model(model_args, data.tokenizer, data_args.max_length)
    apply_cpu_training_settings(model, training_args)
    loader = DataLoader(data.datasets["train"].with_format(None), batch_size=training_args.per_device_train_batch_size,
                        shuffle=True, collate_fn=make_collator(model_args, data.tokenizer),
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=training_args.learning_rate,
                                  fused=training_args.optim == "adamw_torch_fused")
    fused = fused_output_loss(model_args, training_args, True, None)
    masked, bf16 = model_args.model_type == "bert4rec", bool(training_args.bf16)
    series, batches = [], iter(())
    model.train()
    for step in range(1, steps + 1):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if fused is None:
                loss = model(**batch).loss
            else:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                with hidden_states_forward(model) as hidden_only:
                    out = model(**inputs, **hidden_only)
                loss = fused.loss(model, out.hidden_states[-1], batch["labels"], shift=not masked)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
        if step % every == 0:
            series.append(round(rss_mb()))
    return {"model": model_type, "overrides": " ".join(overrides), "series": series, "every": every,
            "growth_mb_per_step": (series[-1] - series[0]) / max(1, (len(series) - 1) * every)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--models", nargs="+", default=["bert4rec", "llama", "gpt2", "gru"])
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--overrides", default="", help="recipe flags for every row, one string")
    parser.add_argument("--one", help=argparse.SUPPRESS)           # internal: the subprocess's row
    args = parser.parse_args()
    overrides = args.overrides.split()
    if args.one:
        print(json.dumps(measure(args.dataset, args.one, args.steps, args.every, overrides)))
        return
    print(f"| model | overrides | RSS MB every {args.every} steps | growth MB/step |\n|---|---|---|---:|")
    for model_type in args.models:
        proc = subprocess.run([sys.executable, __file__, "--one", model_type, "--dataset", args.dataset,
                               "--steps", str(args.steps), "--every", str(args.every), "--overrides", args.overrides],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            sys.exit(f"{model_type}: failed\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {row['model']} | {row['overrides'] or '-'} | {', '.join(f'{v:,}' for v in row['series'])} | "
              f"{row['growth_mb_per_step']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
