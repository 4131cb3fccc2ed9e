"""One dropout call, forward and backward, torch's mask against PCG64's (behavior_lm/models/fast_dropout.py).

Usage: python scripts/bench_dropout.py [--repeats 50] [--threads 1]

Shapes of the ML-100K recipes (batch 128, windows of 51, width 64, 2 heads): the attention
probabilities and the hidden states, in float32 and bfloat16. The two variants alternate call by
call, so load on the machine hits both alike; prints the medians and their ratio as a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from behavior_lm.models.fast_dropout import fast_dropout

SHAPES = {"attention probabilities": (128, 2, 51, 51), "hidden states": (128, 51, 64)}


def timed(fn, x: torch.Tensor, p: float) -> float:
    x = x.detach().requires_grad_(True)
    start = time.perf_counter()
    fn(x, p, True).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--p", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"\np = {args.p}, {args.threads} thread(s), median of {args.repeats}\n")
    print("| tensor | dtype | torch | PCG64 | ratio |\n|---|---|---:|---:|---:|")
    for name, shape in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, dtype=dtype)
            times = {"torch": [], "pcg64": []}
            for _ in range(3):                            # warm-up
                timed(torch.nn.functional.dropout, x, args.p), timed(fast_dropout, x, args.p)
            for _ in range(args.repeats):
                times["torch"].append(timed(torch.nn.functional.dropout, x, args.p))
                times["pcg64"].append(timed(fast_dropout, x, args.p))
            a, b = (statistics.median(times[k]) * 1e3 for k in ("torch", "pcg64"))
            print(f"| {name} {shape} | {str(dtype).removeprefix('torch.')} | {a:.1f} ms | {b:.1f} ms | {b / a:.2f} |")


if __name__ == "__main__":
    main()
