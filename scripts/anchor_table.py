"""Print finished runs next to the published anchors of ../shared/datasets/ANCHORS.md.

Usage:
    python scripts/anchor_table.py runs/gpt2-ml-1m runs/gpt2-beauty [...]

The anchor values below are copied from ANCHORS.md (section A, full ranking, leave-one-out,
seen items filtered) so the comparison states its source; they are references, not our results.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ANCHORS = {
    "ml-1m": [("SASRec+ (full CE), Dross RecSys'23", 0.3152, 0.1821),
              ("BERT4Rec, Dross RecSys'23", 0.2843, 0.1537),
              ("GRU4Rec (CE), Dross via HSTU README", 0.2811, 0.1648),
              ("SASRec (BCE, 1 neg), Dross", 0.2500, 0.1341)],
    "beauty": [("SASRec (BCE), S3-Rec paper", 0.0605, 0.0318),
               ("SASRec CE, RecBole user runs", 0.083, 0.0415),
               ("SASRec, genrec reproduction", 0.0688, 0.0375),
               ("SASRec, tiger-cf reproduction", 0.05165, 0.02718),
               ("BERT4Rec, S3-Rec paper", 0.0347, 0.0170),
               ("GRU4Rec, S3-Rec paper", 0.0283, 0.0137),
               ("PopRec, S3-Rec paper", 0.0152, 0.0068)],
}


def main(run_dirs: list[str]) -> None:
    runs = [(Path(r), json.loads((Path(r) / "metrics.json").read_text())) for r in run_dirs]
    print("| dataset | model | HR@10 | NDCG@10 | epochs (best) | train minutes | stopped by | source |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for ds in dict.fromkeys(m["data"]["dataset"] for _, m in runs):
        floors: dict[str, tuple[dict, Path]] = {}    # same split, same floors: print each once
        for run, m in runs:
            if m["data"]["dataset"] != ds:
                continue
            t = m["train"]
            print(f"| {ds} | behavior-lm {m['model_type']} ({t['parameters'] / 1e6:.2f}M) | "
                  f"{m['test']['hr@10']:.4f} | {m['test']['ndcg@10']:.4f} | "
                  f"{t['epochs_run']:g} ({t['best_epoch']:g}) | {t['seconds'] / 60:.1f} | "
                  f"{t.get('stopped_by', '')} | {run} |")
            for name, pm in m["baselines"]["test"].items():
                floors.setdefault(name, (pm, run))
        for name, (pm, run) in floors.items():
            print(f"| {ds} | {name} floor (ours) | {pm['hr@10']:.4f} | {pm['ndcg@10']:.4f} | | | | {run} |")
        for name, hr, nd in ANCHORS.get(ds, []):
            print(f"| {ds} | {name} | {hr:.4f} | {nd:.4f} | | | | ANCHORS.md |")


if __name__ == "__main__":
    main(sys.argv[1:])
