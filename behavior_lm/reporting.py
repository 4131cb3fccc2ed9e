"""Results as people read them: a Markdown table and a PNG of the training curves."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402


def metrics_table(rows: Mapping[str, Mapping[str, float]], ks: Sequence[int]) -> str:
    """Markdown table, one row per model/baseline: HR, NDCG, MRR at every K."""
    cols = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    lines = ["| model | " + " | ".join(c.upper() for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" if c in m else "" for c in cols) + " |")
    return "\n".join(lines)


def training_curves(log_history: Sequence[Mapping], path: Path,
                    metric: str = "eval_ndcg@10", title: str = "") -> Path:
    """Plot training loss and the validation metric per epoch into ``path`` (PNG)."""
    train = [(h["epoch"], h["loss"]) for h in log_history if "loss" in h and "epoch" in h]
    val = [(h["epoch"], h[metric]) for h in log_history if metric in h and "epoch" in h]
    fig, ax1 = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax1.plot(*zip(*train), color="tab:blue", marker="o", ms=3, label="training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (next-token CE)", color="tab:blue")
    ax2 = ax1.twinx()
    if val:
        ax2.plot(*zip(*val), color="tab:orange", marker="s", ms=3,
                 label=f"validation {metric.removeprefix('eval_').upper()}")
        best = (min if metric.endswith(("mae", "rmse", "loss")) else max)(val, key=lambda p: p[1])
        ax2.axvline(best[0], color="tab:orange", ls=":", lw=1)
        ax2.annotate(f"best {best[1]:.4f} @ epoch {best[0]:g}", best, textcoords="offset points",
                     xytext=(-10, -14), ha="right", fontsize=8, color="tab:orange")
    ax2.set_ylabel(f"validation {metric.removeprefix('eval_').upper()}", color="tab:orange")
    ax1.set_title(title or "training curves")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
