"""Harness scoring speed by evaluation batch size (full ranking of every test user).

Usage:
    python scripts/bench_eval_batch.py RUN_DIR [--batch_sizes 64 128 256 512] [--repeats 3]

Loads a finished run, rebuilds its test split from recipe.yaml (cached) and times
``evaluate_model`` at each batch size, alternating sizes across repeats; prints the median seconds
and users per second.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import yaml


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import json

    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    import behavior_lm  # noqa: F401
    from behavior_lm.arguments import DataArguments
    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.evaluation.harness import evaluate_model
    from behavior_lm.evaluation.protocol import EvalProtocol
    from behavior_lm.models.auto import MASKED_MODEL_TYPES, template_for

    run = Path(args.run_dir)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    data = prepare_data(DataArguments.of_run(run),
                        template=template_for(recipe.get("model_type", "gpt2")))
    saved = json.loads((run / "metrics.json").read_text())
    protocol = EvalProtocol.from_dict(saved["protocol"])
    auto = AutoModelForMaskedLM if saved.get("model_type") in MASKED_MODEL_TYPES else AutoModelForCausalLM
    model = auto.from_pretrained(run).eval()
    test = data.datasets["test"]
    times: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    for _ in range(args.repeats):
        for b in args.batch_sizes:
            start = time.perf_counter()
            evaluate_model(model, test, data.tokenizer, protocol, batch_size=b)
            times[b].append(time.perf_counter() - start)
    print(f"{run}: {test.num_rows} test users, full ranking, median of {args.repeats}")
    print("| eval batch | seconds | users/s |")
    print("|---:|---:|---:|")
    for b, v in times.items():
        print(f"| {b} | {statistics.median(v):.2f} | {test.num_rows / statistics.median(v):,.0f} |")


if __name__ == "__main__":
    main()
