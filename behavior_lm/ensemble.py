"""``behavior-lm ensemble RUN_DIR... --method M --output_dir D``: fuse finished runs (and floors).

The runs must have been trained on one split (identical data settings and vocabulary, the same
evaluation protocol), otherwise their scores would not describe the same users and this refuses
in one line. The weights of ``weighted`` are fitted on the validation split; test is scored
once, by the harness, for the ensemble and for each part, so the table shows what fusion adds.
The result is a directory that ``pipeline("next-behavior", model=D)``, ``behavior-lm predict D``,
``behavior-lm evaluate D`` and ``behavior-lm serve D`` load like any run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from behavior_lm.arguments import DataArguments, redacted
from behavior_lm.data.collators import BehaviorCollator
from behavior_lm.data.pipeline import PreparedData, prepare_data
from behavior_lm.errors import RecipeError
from behavior_lm.evaluation.floors import FLOORS, build_floor
from behavior_lm.evaluation.fusion import (CLASSIFICATION_METHODS, RANKING_METHODS, REGRESSION_METHODS,
                                           BehaviorEnsembleConfig, BehaviorEnsembleModel, describe,
                                           fit_weights, fuse, load_member, log_likelihood)
from behavior_lm.evaluation.harness import evaluate_baselines
from behavior_lm.evaluation.metrics import ranking_metrics
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.evaluation.run_eval import task_logits
from behavior_lm.evaluation.scoring import score_ranks
from behavior_lm.evaluation.task_metrics import floor_metrics, score_predictions, task_table
from behavior_lm.tasks import get_task
from behavior_lm.reporting import metrics_table
from behavior_lm.rundir import check_output_dir, partial_of, promote, writer_lock
from behavior_lm.tokenization.behavior_tokenizer import SIDE_FILE, behavior_token_ids, item_mask

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    path: Path
    name: str
    metrics: dict
    data_args: DataArguments


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """The finished runs, checked to share one split, vocabulary and protocol."""
    runs = []
    for raw in run_dirs:
        path = Path(raw)
        for name in ("recipe.yaml", "metrics.json", "config.json"):
            if not (path / name).is_file():
                raise RecipeError(f"{path}: not a finished run directory (no {name})")
        metrics = json.loads((path / "metrics.json").read_text())
        if metrics.get("model_type") == "ensemble":
            raise RecipeError(f"{path}: is an ensemble; give its runs instead (ensembles do not nest)")
        model_record = metrics.get("model", {})
        if model_record.get("semantic_ids") or (model_record.get("text_serialization")
                                                and get_task(metrics.get("task", "next-item")).ranking):
            raise RecipeError(f"{path}: semantic-id and text-ranker runs do not score the catalogue as token "
                              "logits, so they cannot be fused yet")
        runs.append(Run(path, path.name, metrics, DataArguments.of_run(path)))
    if not runs:
        raise RecipeError("ensemble: give at least one run directory")
    names = [r.name for r in runs]
    for i, r in enumerate(runs):                # unique member names: folder name, then a counter
        if names.count(names[i]) > 1 or names[i] in FLOORS:
            r.name = f"{names[i]}-{names[:i + 1].count(names[i])}"
    first = runs[0]
    base = dataclasses.asdict(first.data_args)
    first_vocab = AutoTokenizer.from_pretrained(first.path).get_vocab()
    for r in runs[1:]:
        diff = sorted(k for k, v in dataclasses.asdict(r.data_args).items() if k != "cache" and base[k] != v)
        if diff:
            raise RecipeError(f"{r.path}: data settings differ from {first.path} ({', '.join(diff)}); "
                              "an ensemble fuses runs trained on one split")
        for key in ("filter_seen", "behavior_scoring", "split", "max_length"):
            if r.metrics["protocol"].get(key) != first.metrics["protocol"].get(key):
                raise RecipeError(f"{r.path}: protocol {key} is {r.metrics['protocol'].get(key)!r}, "
                                  f"{first.path} has {first.metrics['protocol'].get(key)!r}")
        if AutoTokenizer.from_pretrained(r.path).get_vocab() != first_vocab:
            raise RecipeError(f"{r.path}: its vocabulary differs from {first.path}'s")
    return runs


def check_method(task: str, method: str, floors: Sequence[str]) -> None:
    kind = get_task(task)
    allowed = (RANKING_METHODS if kind.ranking else REGRESSION_METHODS if kind.regression
               else CLASSIFICATION_METHODS)
    if method not in allowed:
        raise RecipeError(f"--method {method!r} does not apply to task {task}; choose from {', '.join(allowed)}")
    if floors and not kind.ranking:
        raise RecipeError(f"--floors are next-item scorers; task {task} has none to fuse")
    unknown = [f for f in floors if f not in FLOORS]
    if unknown:
        raise RecipeError(f"--floors: unknown {', '.join(unknown)}; known: {', '.join(FLOORS)}")


def build_ensemble(run_dirs: Sequence[str | Path], method: str, output_dir: str | Path, *,
                   floors: Sequence[str] = (), weights: Sequence[float] | None = None,
                   batch_size: int = 128, overwrite: bool = False) -> Path:
    """Fuse ``run_dirs`` (and ``floors``) with ``method``; score it; write the ensemble directory."""
    final = Path(output_dir)
    check_output_dir(final, overwrite)
    runs = load_runs(run_dirs)
    task = runs[0].metrics.get("task", "next-item")
    if any(r.metrics.get("task", "next-item") != task for r in runs):
        raise RecipeError("ensemble: the runs are trained for different tasks "
                          f"({', '.join(sorted({r.metrics.get('task', 'next-item') for r in runs}))})")
    check_method(task, method, floors)
    n_members = len(runs) + len(floors)
    if weights is not None:
        if method == "weighted":
            raise RecipeError("--weights and --method weighted: the weighted method fits its weights "
                              "on validation; give --weights with mean, rrf or vote")
        if len(weights) != n_members or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise RecipeError(f"--weights: {n_members} non-negative numbers (one per run, then per floor) "
                              f"with a positive sum, got {list(weights)}")
    with writer_lock(final):
        kind = get_task(task)
        data = prepare_data(runs[0].data_args, template=kind.template(runs[0].metrics.get("model_type", "gpt2")))
        if data.tokenizer.get_vocab() != AutoTokenizer.from_pretrained(runs[0].path).get_vocab():
            raise RecipeError(f"{runs[0].path}: the data prepared from recipe.yaml has a different "
                              "vocabulary than the saved tokenizer (did the dataset file change?)")
        models = [load_member(r.path, task) for r in runs]
        candidates = item_mask(data.tokenizer, models[0].get_output_embeddings().out_features) \
            if kind.ranking else None
        floor_modules = [build_floor(f, data.datasets["train"], item_mask(data.tokenizer)) for f in floors]
        members = ([{"name": r.name, "kind": "model", "model_type": r.metrics.get("model_type"),
                     "source": str(r.path)} for r in runs]
                   + [{"name": f, "kind": "floor", "floor": f, "source": "training split"} for f in floors])
        config = BehaviorEnsembleConfig(
            method=method, members=members, task=task,
            weights=list(np.asarray(weights, float) / sum(weights)) if weights is not None else None,
            vocab_size=len(data.tokenizer), pad_token_id=data.tokenizer.pad_token_id,
            bos_token_id=data.tokenizer.bos_token_id, eos_token_id=data.tokenizer.eos_token_id)
        config.behavior_lm = {**dict(getattr(models[0].config, "behavior_lm", None) or {}),
                              "model_type": "ensemble", "members": [m["name"] for m in members]}
        if not kind.ranking:
            config.id2label = dict(models[0].config.id2label)
            config.label2id = dict(models[0].config.label2id)
        ensemble = BehaviorEnsembleModel(config, models, floor_modules).eval()
        protocol = EvalProtocol.from_dict(runs[0].metrics["protocol"])
        if kind.ranking:
            report = _score_ranking(ensemble, data, protocol, batch_size)
        else:
            report = _score_task(ensemble, data, task, batch_size, runs[0].data_args.intent_behavior)
        partial = partial_of(final)
        shutil.rmtree(partial, ignore_errors=True)
        ensemble.save_pretrained(partial)
        data.tokenizer.save_pretrained(partial)
        side = runs[0].path / SIDE_FILE
        if side.is_file():
            shutil.copy2(side, partial / SIDE_FILE)
        _write_files(partial, runs, floors, ensemble, data, protocol, task, report)
        promote(partial, final)
    return final


def _ranking_passes(ensemble: BehaviorEnsembleModel, dataset, tokenizer, protocol: EvalProtocol,
                    candidates: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over a ranking split: each member's ranks, the fused ranks and each member's
    log-probability of the target (what weight fitting needs)."""
    loader = DataLoader(dataset.with_format(None), batch_size=batch_size, shuffle=False,
                        collate_fn=BehaviorCollator(tokenizer.pad_token_id))
    b_ids = torch.tensor(list(behavior_token_ids(tokenizer).values()), dtype=torch.long)
    member_ranks, fused_ranks, target_lp = [], [], []
    for batch in tqdm(loader, desc="ensemble", leave=False, disable=len(loader) < 4):
        given = batch["target_behavior"] if protocol.condition_on_behavior else None
        lp = ensemble.member_log_probs(batch["input_ids"], batch["attention_mask"], candidates, b_ids, given)
        seen = batch["seen"] if protocol.filter_seen else None
        target = batch["target"]
        member_ranks.append(np.stack([score_ranks(m, target, candidates, seen)[0].numpy() for m in lp]))
        fused = fuse(lp, ensemble.weights, ensemble.config.method, ensemble.config.rrf_k)
        fused_ranks.append(score_ranks(fused.masked_fill(~candidates, float("-inf")), target, candidates, seen)[0].numpy())
        target_lp.append(lp[:, torch.arange(target.numel()), target].T.numpy())
    return np.concatenate(member_ranks, axis=1), np.concatenate(fused_ranks), np.concatenate(target_lp)


def _score_ranking(ensemble: BehaviorEnsembleModel, data: PreparedData, protocol: EvalProtocol,
                   batch_size: int) -> dict:
    tok = data.tokenizer
    candidates = item_mask(tok, ensemble.get_output_embeddings().out_features)
    names = ensemble.member_names
    report: dict = {"fit": None}
    val = data.datasets["validation"]
    if ensemble.config.method == "weighted":
        _, _, target_lp = _ranking_passes(ensemble, val, tok, protocol, candidates, batch_size)
        uniform = np.full(len(names), 1.0 / len(names))
        fitted = fit_weights(target_lp)
        ensemble.config.weights = [float(w) for w in fitted]
        report["fit"] = {"split": "validation", "examples": int(target_lp.shape[0]),
                         "objective": "mean log-likelihood of the validation targets",
                         "log_likelihood_uniform": log_likelihood(target_lp, uniform),
                         "log_likelihood_fitted": log_likelihood(target_lp, fitted),
                         "weights": dict(zip(names, ensemble.config.weights))}
    for split in ("validation", "test"):
        m_ranks, f_ranks, _ = _ranking_passes(ensemble, data.datasets[split], tok, protocol, candidates, batch_size)
        report[split] = {"ensemble": {**ranking_metrics(f_ranks, protocol.ks), "num_examples": int(f_ranks.size)},
                         "members": {n: {**ranking_metrics(r, protocol.ks), "num_examples": int(r.size)}
                                     for n, r in zip(names, m_ranks)}}
    report["floors"] = evaluate_baselines(FLOORS, data.datasets["train"], data.datasets["test"], tok, protocol,
                                          batch_size=batch_size)
    return report


def _score_task(ensemble: BehaviorEnsembleModel, data: PreparedData, task: str, batch_size: int,
                intent_behavior: str) -> dict:
    names = ensemble.member_names
    num_classes = len(data.info["class_names"])
    report: dict = {"fit": None}
    if ensemble.config.method == "weighted":
        lps = []
        for model in ensemble.models:
            logits, labels = task_logits(model, data, "validation", task, batch_size)
            logp = torch.as_tensor(logits).float().log_softmax(-1).numpy()
            lps.append(logp.reshape(-1, logp.shape[-1])[np.arange(labels.size), labels.reshape(-1).clip(min=0)]
                       [labels.reshape(-1) >= 0])
        target_lp = np.stack(lps, axis=1)
        fitted = fit_weights(target_lp)
        ensemble.config.weights = [float(w) for w in fitted]
        report["fit"] = {"split": "validation", "examples": int(target_lp.shape[0]),
                         "objective": "mean log-likelihood of the validation labels",
                         "log_likelihood_uniform": log_likelihood(target_lp, np.full(len(names), 1 / len(names))),
                         "log_likelihood_fitted": log_likelihood(target_lp, fitted),
                         "weights": dict(zip(names, ensemble.config.weights))}
    for split in ("validation", "test"):
        logits, labels = task_logits(ensemble, data, split, task, batch_size)
        members = {}
        for name, model in zip(names, ensemble.models):
            m_logits, m_labels = task_logits(model, data, split, task, batch_size)
            members[name] = score_predictions(task, m_logits, m_labels, num_classes)
        report[split] = {"ensemble": score_predictions(task, logits, labels, num_classes), "members": members}
    report["floors"] = floor_metrics(task, data.datasets["train"], data.datasets["test"], num_classes,
                                     data.tokenizer, intent_behavior)
    return report


def _write_files(folder: Path, runs: list[Run], floors: Sequence[str], ensemble: BehaviorEnsembleModel,
                 data: PreparedData, protocol: EvalProtocol, task: str, report: dict) -> None:
    ensemble.config.save_pretrained(folder)           # the fitted weights
    label = f"ensemble ({describe(ensemble.config)})"
    metrics = {"protocol": protocol.to_dict(), "test": report["test"]["ensemble"],
               "validation": report["validation"]["ensemble"],
               "members": {"test": report["test"]["members"], "validation": report["validation"]["members"]},
               "baselines": {"test": report["floors"]}, "fit": report["fit"],
               "ensemble": {"method": ensemble.config.method, "members": ensemble.config.members,
                            "weights": dict(zip(ensemble.member_names, ensemble.weights.tolist()))},
               "data": data.info, "model_type": "ensemble", "task": task}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    recipe = {**dataclasses.asdict(runs[0].data_args), "model_type": "ensemble",
              "method": ensemble.config.method, "runs": [str(r.path) for r in runs], "floors": list(floors)}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(redacted(recipe), sort_keys=False))
    rows = {label: report["test"]["ensemble"],
            **{f"{n} (member)": m for n, m in report["test"]["members"].items()},
            **{f"{n} (floor)": m for n, m in report["floors"].items()}}
    if get_task(task).ranking:
        table = metrics_table(rows, protocol.ks)
        what = f"Protocol: {protocol.describe()}"
    else:
        table = task_table(rows, task, data.info.get("class_names", []))
        what = f"Task: {task}"
    fit = report["fit"]
    fit_line = ""
    if fit:
        fit_line = (f"Weights fitted on {fit['examples']} validation examples ({fit['objective']}: "
                    f"{fit['log_likelihood_uniform']:.4f} with equal weights, {fit['log_likelihood_fitted']:.4f} "
                    f"fitted): " + ", ".join(f"{n} {w:.3f}" for n, w in fit["weights"].items()) + ".\n\n")
    parts = ", ".join(f"{r.name} ({r.metrics.get('model_type')}, {r.path})" for r in runs)
    (folder / "results.md").write_text(
        f"# Ensemble on {data.info['dataset']}, {task}: test results\n\n{what}. "
        f"Members: {parts}"
        f"{'; floors: ' + ', '.join(floors) if floors else ''}.\n\n{fit_line}{table}\n")
