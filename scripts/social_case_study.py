"""SYNTHETIC social-media case: models vs the oracle that knows the generating process.

Usage:
    python scripts/social_case_study.py [--output_dir runs/synthetic] [-- --key value ...]

Trains (or reuses) recipes/synthetic/{llama,gru}-social.yaml and prints one table: next-item
HR/NDCG/MRR@10 on each user's last event (mixture over behaviors, seen items kept) and next-behavior
accuracy, for the models, the floors and the oracle (exact generating probabilities; ties in the
true item distribution broken uniformly at random, in expectation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", default="runs/synthetic")
    args, extra = parser.parse_known_args()
    from behavior_lm.cli.main import main as cli
    from behavior_lm.data import synthetic

    out = Path(args.output_dir)
    rows = {}
    for model in ("llama", "gru"):
        run = out / f"{model}-social"
        if not (run / "metrics.json").is_file():
            code = cli(["train", str(REPO / "recipes" / "synthetic" / f"{model}-social.yaml"), *extra,
                        "--output_dir", str(run), "--disable_tqdm", "true"])
            if code != 0:
                sys.exit(f"{model} failed")
        rows[model] = json.loads((run / "metrics.json").read_text())
    log = synthetic.generate()
    by_user: dict[str, list] = {}
    for row in log.rows:
        by_user.setdefault(row[0], []).append(row)
    examples = [(u, ev[-2][2], ev[-2][1], ev[-1][2], ev[-1][1]) for u, ev in by_user.items()]
    oracle = synthetic.oracle_metrics(examples, log.favourite)
    print("| SYNTHETIC social log, last event per user | HR@10 | NDCG@10 | MRR@10 | next-behavior accuracy |")
    print("|---|---:|---:|---:|---:|")
    for model, m in rows.items():
        t, nb = m["test"], m.get("next_behavior", {}).get("argmax", {})
        print(f"| {model} | {t['hr@10']:.4f} | {t['ndcg@10']:.4f} | {t['mrr@10']:.4f} | "
              f"{nb.get('accuracy', float('nan')):.4f} |")
    first = next(iter(rows.values()))
    nbf = first.get("next_behavior", {})
    for floor, t in first["baselines"]["test"].items():
        print(f"| {floor} (floor) | {t['hr@10']:.4f} | {t['ndcg@10']:.4f} | {t['mrr@10']:.4f} | |")
    if "majority (floor)" in nbf:
        print(f"| majority behavior (floor) | | | | {nbf['majority (floor)']['accuracy']:.4f} |")
    print(f"| **oracle** (true process) | {oracle['hr@10']:.4f} | {oracle['ndcg@10']:.4f} | "
          f"{oracle['mrr@10']:.4f} | {oracle['next_behavior_accuracy']:.4f} |")


if __name__ == "__main__":
    main()
