"""Start-up cost of the ``behavior-lm`` command: wall seconds (median of --repeats runs) of
``--help``, a recipe typo, a recipe value out of range, a malformed data file and ``predict`` on a
finished run, for this checkout's console script and, with ``--before DIR``, for another checkout
run the same way (``python -m behavior_lm.cli.main`` with ``PYTHONPATH=DIR``, which is how the
console script started before it deferred the heavy imports).

    python scripts/bench_startup.py --run_dir runs/conv/gru-ml-1m --before /tmp/before
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart" / "gpt2-ml-100k.yaml"


def cases(tmp: Path, run_dir: str) -> dict[str, list[str]]:
    typo = tmp / "typo.yaml"
    typo.write_text("dataset: ml-100k\nhiden_size: 4\n")
    bad = tmp / "log.csv"
    bad.write_text("user_id,item_id,timestamp\n1,10,100\n1,11,soon\n")
    return {
        "--help": ["--help"],
        "recipe typo": ["train", str(typo)],
        "value out of range (flag)": ["train", str(QUICKSTART), "--hidden_size", "-3"],
        "malformed data file": ["train", str(QUICKSTART), "--data_path", str(bad), "--dataset", "x",
                                "--cache", "false", "--output_dir", str(tmp / "run")],
        "predict (one history)": ["predict", run_dir, "--history", "1 2 3", "--top_k", "5"],
    }


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True, help="a finished run for the predict case")
    parser.add_argument("--before", default=None, help="another checkout to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("behavior-lm"))
    launchers = {"now": ([exe], dict(os.environ))}
    if args.before:
        env = dict(os.environ, PYTHONPATH=str(Path(args.before).resolve()))
        launchers = {"before": ([sys.executable, "-m", "behavior_lm.cli.main"], env), **launchers}
    with tempfile.TemporaryDirectory() as tmp:
        rows = cases(Path(tmp), args.run_dir)
        print("| command | " + " | ".join(f"{k} (s)" for k in launchers) + (" | ratio |" if len(launchers) > 1 else " |"))
        print("|---|" + "---:|" * (len(launchers) + (len(launchers) > 1)))
        for name, argv in rows.items():
            medians = {}
            codes = set()
            for label, (prefix, env) in launchers.items():
                runs = []
                for _ in range(args.repeats):
                    seconds, code = timed(prefix + argv, env)
                    runs.append(seconds)
                    codes.add(code)
                medians[label] = statistics.median(runs)
            cells = " | ".join(f"{medians[k]:.2f}" for k in launchers)
            ratio = f" | {medians['before'] / medians['now']:.1f}x" if len(medians) > 1 else ""
            print(f"| {name} (exit {'/'.join(map(str, sorted(codes)))}) | {cells}{ratio} |", flush=True)


if __name__ == "__main__":
    main()
