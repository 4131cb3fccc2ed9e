"""Training and evaluation speed of every model type at recipe size, in one run.

Usage:
    python scripts/bench_speed.py [--datasets ml-100k ml-1m] [--models gpt2 llama gru lstm bert4rec]
                                  [--steps 20] [--threads 1] [--eval_batch_size 128]
                                  [--overrides '--fused_softmax false'] [--no_eval]

For each (dataset, model type) a fresh subprocess (so peak RSS is its own) prepares the recipe's
data (cached), builds the model and runs, on real training batches of the recipe's batch size:

- ``targets/s``: training targets (positions with a label) per second over ``--steps`` optimizer
  steps (forward, backward, AdamW step; the Trainer's own step without its logging), after 3 warm-up steps;
- ``s/epoch``: that step time times the steps of one epoch;
- ``GFLOP/s`` and ``% peak``: FLOPs of one step's loss as this run computes it (fused or stock;
  the fused loss skips the unlabelled positions) counted by ``torch.utils.flop_counter`` over the
  measured time, against a float32 matmul peak measured in the same process with the same threads;
- ``eval users/s``: the harness's full-catalogue ranking of the test users (all of them), with
  ``--eval_batch_size``;
- ``peak RSS``: of the subprocess;
- ``page faults/step``: minor page faults per timed step, i.e. fresh pages the kernel mapped and
  zeroed (large tensors that glibc serves with mmap; ``keep_freed_memory`` removes them).

Prints a markdown table; ``--json FILE`` also writes the rows. ML-1M needs BEHAVIOR_LM_DATA.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("gpt2", "llama", "gru", "lstm", "bert4rec")


def recipe_for(dataset: str, model: str) -> tuple[Path, list[str]]:
    """The recipe of ``model`` on ``dataset`` (and overrides where a dataset has no such recipe)."""
    if dataset == "ml-100k" and model == "gpt2":
        return REPO / "recipes" / "quickstart" / "gpt2-ml-100k.yaml", []
    path = REPO / "recipes" / "next-item" / f"{model}-{dataset}.yaml"
    if path.is_file():
        return path, []
    return REPO / "recipes" / "next-item" / f"gru-{dataset}.yaml", ["--model_type", model]


def matmul_peak(seconds: float = 1.0, n: int = 512) -> float:
    """Float32 GFLOP/s of a square matmul with this process's threads (median of repeats)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        rates.append(10 * 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def measure(dataset: str, model_type: str, steps: int, eval_batch_size: int,
            overrides: list[str] | None = None, recipe: Path | None = None, evaluate: bool = True,
            profile: int = 0) -> dict:
    """One (dataset, model type) row; ``overrides`` are recipe flags (``scripts/bench_peers.py``
    sets equal sizes with them), ``recipe`` replaces the model's own recipe.

    ``--torch_compile true`` among the overrides compiles the model as the Trainer does through
    accelerate (``torch.compile``, inductor, dynamic shapes left to dynamo); the warm-up steps
    then include the compilation, which is reported apart as ``warmup_s``.

    ``profile > 0`` runs the timed steps under ``torch.profiler`` and adds ``profile``: the table
    of the ``profile`` operators with the most self CPU time (the timings then include the
    profiler's overhead, so compare its shares, not its targets/s)."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from behavior_lm.training.recipes import parse_recipe
    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.evaluation.harness import evaluate_model
    from behavior_lm.models.auto import build_model, count_parameters, template_for
    from behavior_lm.training.trainer import apply_cpu_training_settings
    from behavior_lm.data.collators import IGNORE_INDEX
    from behavior_lm.training.fused_softmax import hidden_states_forward
    from behavior_lm.training.run import fused_output_loss, make_collator, protocol_for

    path, extra = recipe_for(dataset, model_type)
    if recipe is not None:
        path, extra = recipe, ["--model_type", model_type]
    data_args, model_args, training_args, _ = parse_recipe(
        path, [*extra, *(overrides or []), "--output_dir", "/tmp/bench-speed"])
    torch.manual_seed(0)
    data = prepare_data(data_args, template=template_for(model_args.model_type))
    model = build_model(model_args, data.tokenizer, data_args.max_length)
    apply_cpu_training_settings(model, training_args)    # as BehaviorTrainer does for a CPU run
    collator = make_collator(model_args, data.tokenizer)
    batch_size = training_args.per_device_train_batch_size
    train = data.datasets["train"]
    loader = DataLoader(train.with_format(None), batch_size=batch_size, shuffle=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(0))
    # the Trainer's default optimizer (``optim: adamw_torch_fused``)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training_args.learning_rate,
                                  fused=training_args.optim == "adamw_torch_fused")
    flop_model = model
    if training_args.torch_compile:
        model = torch.compile(model, backend=training_args.torch_compile_backend or "inductor",
                              mode=training_args.torch_compile_mode)
    masked = model_args.model_type == "bert4rec"

    def targets(batch) -> int:
        labels = batch["labels"] if masked else batch["labels"][:, 1:]
        return int((labels != IGNORE_INDEX).sum())

    # the loss the Trainer computes for this recipe: the fused full softmax (fp32, or its matmuls
    # in bf16 with the forward under autocast for `bf16: true`) or the model's stock loss
    fused = fused_output_loss(model_args, training_args, True, None)
    bf16 = bool(training_args.bf16)

    def loss_of(net, batch) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if fused is None:
                return net(**batch).loss
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with hidden_states_forward(flop_model) as hidden_only:
                out = net(**inputs, **hidden_only)
        return fused.loss(flop_model, out.hidden_states[-1], batch["labels"], shift=not masked)

    def step(batch) -> None:
        loss_of(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    batches = []
    while len(batches) < steps + 3:
        batches.extend(loader)
    start = time.perf_counter()
    for batch in batches[:3]:
        step(batch)
    warmup_seconds = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:   # the FLOPs of the loss this run computes
        loss_of(flop_model, batches[3]).backward()
    optimizer.zero_grad(set_to_none=True)
    flops_per_target = counter.get_total_flops() / targets(batches[3])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    profiler = contextlib.nullcontext()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        profiler = torch_profile(activities=[ProfilerActivity.CPU])
    start = time.perf_counter()
    n_targets = 0
    with profiler:
        for batch in batches[3:3 + steps]:
            n_targets += targets(batch)
            step(batch)
    seconds = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    steps_per_epoch = -(-train.num_rows // batch_size)
    targets_per_epoch = sum(targets(batch) for batch in loader)

    flop_model.eval()
    protocol = protocol_for(data_args, training_args, data.with_behaviors)
    test = data.datasets["test"]
    start = time.perf_counter()
    if evaluate:
        evaluate_model(flop_model, test, data.tokenizer, protocol, batch_size=eval_batch_size)
    eval_seconds = max(time.perf_counter() - start, 1e-9)
    peak = matmul_peak()
    rate = n_targets * flops_per_target / seconds / 1e9
    return {
        "dataset": dataset, "model": model_type, "params": count_parameters(model),
        "threads": torch.get_num_threads(), "batch": batch_size, "max_length": data_args.max_length,
        "targets_per_s": n_targets / seconds, "s_per_epoch": seconds / steps * steps_per_epoch,
        "gflops": rate, "peak_gflops": peak, "pct_peak": 100 * rate / peak,
        "eval_users": test.num_rows, "eval_users_per_s": test.num_rows / eval_seconds,
        "eval_seconds": eval_seconds, "targets_per_epoch": targets_per_epoch,
        "warmup_s": warmup_seconds, "page_faults_per_step": faults / steps, "compiled": bool(training_args.torch_compile),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **({"profile": profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=profile)}
           if profile else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval_batch_size", type=int, default=128)
    parser.add_argument("--json", default=None)
    parser.add_argument("--overrides", default="",
                        help="recipe flags for every row, one string: --overrides '--fused_softmax false'")
    parser.add_argument("--no_eval", action="store_true", help="time training only")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile the timed steps; print each row's N operators with the most self CPU time")
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(*args.one, args.steps, args.eval_batch_size, overrides=shlex.split(args.overrides),
                                 evaluate=not args.no_eval, profile=args.profile)))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    for dataset in args.datasets:
        for model in args.models:
            done = subprocess.run([sys.executable, __file__, "--one", dataset, model, "--steps", str(args.steps),
                                   "--threads", str(args.threads), "--eval_batch_size", str(args.eval_batch_size),
                                   f"--overrides={args.overrides}", "--profile", str(args.profile),
                                   *(["--no_eval"] if args.no_eval else [])],
                                  capture_output=True, text=True, env=env)
            if done.returncode != 0:
                print(f"{dataset} {model}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{dataset} {model}: {rows[-1]['targets_per_s']:.0f} targets/s", file=sys.stderr)
            if args.profile:
                print(f"\n{dataset} {model}, {args.steps} steps under torch.profiler\n{rows[-1]['profile']}")
    print(f"\n{args.threads} thread(s), {args.steps} timed steps each{(', ' + args.overrides) if args.overrides else ''}\n")
    print("| dataset | model | params | targets/s | s/epoch | GFLOP/s | % of matmul peak | eval users/s "
          "| peak RSS (MB) | page faults/step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def evaluated(r: dict) -> str:
        return "-" if args.no_eval else f"{r['eval_users_per_s']:,.0f}"

    for r in rows:
        print(f"| {r['dataset']} | {r['model']} | {r['params'] / 1e6:.2f}M | {r['targets_per_s']:,.0f} | "
              f"{r['s_per_epoch']:.1f} | {r['gflops']:.1f} | {r['pct_peak']:.0f}% "
              f"(peak {r['peak_gflops']:.0f}) | {evaluated(r)} | {r['peak_rss_mb']:,.0f} | "
              f"{r['page_faults_per_step']:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
