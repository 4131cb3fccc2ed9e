"""Train several recipes on the same split and put them in one table and one chart.

Every run is an ordinary run directory (``<output_dir>/<recipe name>``), scored by the same
harness; a finished run is reused, so an interrupted comparison picks up where it stopped. All
recipes must prepare the data identically (same DataArguments), otherwise the numbers would not be
comparable and this refuses.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from behavior_lm.training.recipes import parse_recipe
from behavior_lm.errors import RecipeError
from behavior_lm.reporting import RANKING_COLUMNS, comparison_chart, task_description
from behavior_lm.rundir import atomic_write
from behavior_lm.tasks import get_task
from behavior_lm.training.run import train


def compare(recipes: Sequence[str | Path], output_dir: str | Path,
            overrides: Sequence[str] = ()) -> Path:
    """Train (or reuse) every recipe under ``output_dir``; write comparison.{md,json,png}."""
    out = Path(output_dir)
    parsed = []
    for recipe in recipes:
        name = Path(recipe).stem
        data_args, model_args, training_args, raw = parse_recipe(
            recipe, [*overrides, "--output_dir", str(out / name)])
        parsed.append((name, data_args, model_args, training_args, raw))
    first = dataclasses.asdict(parsed[0][1])
    for name, data_args, *_ in parsed[1:]:
        diff = {k for k, v in dataclasses.asdict(data_args).items() if first[k] != v}
        if diff:
            raise RecipeError(f"{name}: data settings differ from {parsed[0][0]} ({', '.join(sorted(diff))}); "
                              "a comparison needs one split")
    metric_names = get_task(parsed[0][1].task).headline
    rows: dict[str, dict] = {}
    floors: dict[str, dict] = {}
    for name, data_args, model_args, training_args, raw in parsed:
        run = Path(training_args.output_dir)
        if not (run / "metrics.json").is_file():
            training_args.overwrite_output_dir = False
            train(data_args, model_args, training_args, raw)
        metrics = json.loads((run / "metrics.json").read_text())
        rows[name] = {**{m: metrics["test"].get(m, float("nan")) for m in metric_names},
                      "train_minutes": metrics["train"]["seconds"] / 60,
                      "parameters": metrics["train"]["parameters"],
                      "epochs": metrics["train"]["epochs_run"], "best_epoch": metrics["train"]["best_epoch"],
                      "model_type": metrics["model_type"], "run": str(run)}
        for floor, fm in metrics["baselines"]["test"].items():
            floors.setdefault(floor, {m: fm.get(m, float("nan")) for m in metric_names})
    if int(os.environ.get("RANK", "0")) == 0:
        _write(out, rows, floors, metrics["protocol"], metrics["data"], metric_names)
    return out


def comparison_table(rows: dict[str, dict], floors: dict[str, dict],
                     metric_names: Sequence[str] = RANKING_COLUMNS) -> str:
    """Models sorted best first by the second metric (NDCG@10, F1 macro; lowest RMSE), then floors."""
    head = " | ".join(m.upper() if "@" in m else m.replace("_", " ") for m in metric_names)
    lines = [f"| model | {head} | train (min) | parameters | epochs (best) |",
             "|---|" + "---:|" * (len(metric_names) + 3)]
    key = metric_names[1]
    sign = 1 if key in ("rmse", "mae") else -1
    for name, r in sorted(rows.items(), key=lambda kv: sign * kv[1][key]):
        cells = " | ".join(f"{r[m]:.4f}" for m in metric_names)
        lines.append(f"| {name} | {cells} | {r['train_minutes']:.1f} | {r['parameters'] / 1e6:.2f}M | "
                     f"{r['epochs']:g} ({r['best_epoch']}) |")
    for name, f in floors.items():
        cells = " | ".join(f"{f[m]:.4f}" for m in metric_names)
        lines.append(f"| {name} (floor) | {cells} | | | |")
    return "\n".join(lines)


def _write(out: Path, rows, floors, protocol, data, metric_names) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(rows, floors, metric_names)
    task = data.get("task", "next-item")
    if get_task(task).ranking:
        seen = "seen items filtered" if protocol["filter_seen"] else "seen items kept"
        what = f"Protocol: {protocol['split']}, {protocol['candidates']} ranking, {seen}"
    else:
        what = task_description(task, data.get("class_names") or [], protocol.get("target", protocol["split"]))
    text = (f"# Comparison on {data['dataset']} ({task})\n\n{what}; {data['prepared']['users']} users, "
            f"{data['prepared']['items']} items.\n\n{table}\n\n![comparison](comparison.png)\n")
    for name, content in (("comparison.md", text),
                          ("comparison.json", json.dumps({"models": rows, "floors": floors,
                                                          "protocol": protocol}, indent=2))):
        atomic_write(out / name, content)
    comparison_chart(rows, floors, out / "comparison.png", metric_names)
