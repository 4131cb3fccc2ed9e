"""Training time of one recipe on 1 process vs 2 processes (accelerate launch, DDP over gloo).

Usage:
    python scripts/bench_ddp.py RECIPE [--epochs 3] [--repeats 1] [-- extra --key value flags]

Runs, back to back: `behavior-lm train` (1 process, per-device batch B) and
`accelerate launch --multi_gpu --num_processes 2` (per-device batch B/2, so the global batch and
the number of optimizer steps are the same). Early stopping is off so both run the same epochs.
Prints each run's training seconds (the Trainer's train runtime, data preparation excluded), the
median per setting and the ratio, and the test NDCG@10 of each (they should agree).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    args, extra = parser.parse_known_args()
    recipe = yaml.safe_load(Path(args.recipe).read_text())
    batch = int(recipe.get("per_device_train_batch_size", 64))
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    common = ["train", args.recipe, "--num_train_epochs", str(args.epochs), "--early_stopping_patience", "0",
              "--disable_tqdm", "true", *extra]
    results: dict[str, list[tuple[float, float]]] = {"1 process": [], "2 processes": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    try:
        for r in range(args.repeats):
            for name, cmd in (
                ("1 process", [sys.executable, "-m", "behavior_lm.cli.main", *common,
                               "--per_device_train_batch_size", str(batch)]),
                ("2 processes", [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "-m",
                                 "behavior_lm.cli.main", *common,
                                 "--per_device_train_batch_size", str(batch // 2)])):
                out = tmp / f"{name.replace(' ', '-')}-{r}"
                proc = subprocess.run([*cmd, "--output_dir", str(out)], capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
                m = json.loads((out / "metrics.json").read_text())
                results[name].append((m["train"]["train_runtime"], m["test"]["ndcg@10"]))
                print(f"{name} run {r + 1}: {m['train']['train_runtime']:.1f} s, "
                      f"world_size {m['train']['world_size']}, steps {m['train']['global_steps']}, "
                      f"test NDCG@10 {m['test']['ndcg@10']:.4f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(t for t, _ in v) for k, v in results.items()}
    print(f"\nrecipe {args.recipe}, {args.epochs} epochs, global batch {batch}")
    print("| setting | train seconds (median) | test NDCG@10 |")
    print("|---|---:|---:|")
    for k, v in results.items():
        print(f"| {k} | {med[k]:.1f} | {', '.join(f'{n:.4f}' for _, n in v)} |")
    print(f"ratio 2 processes / 1 process: {med['2 processes'] / med['1 process']:.2f}")


if __name__ == "__main__":
    main()
