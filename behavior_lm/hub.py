"""Hub-ready runs: stage a run directory with a generated model card, then upload it.

``stage_run`` writes exactly the folder that would be uploaded (weights, config, tokenizer, the
run's metrics/recipe/arguments/plots and a ``README.md`` model card) atomically; ``push_run``
stages into a temporary folder and hands it to ``huggingface_hub`` (``create_repo`` +
``upload_folder``), nothing more. The card states everything a reader needs to trust or reproduce
a number: task, data source and its terms, preprocessing, the full ``EvalProtocol``, the metrics
next to their floors, the training arguments and a ``pipeline("next-behavior")`` snippet.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from behavior_lm.errors import BehaviorLMError, RecipeError
from behavior_lm.tasks import get_task
from behavior_lm.evaluation.protocol import EvalProtocol
from behavior_lm.reporting import results_table
from behavior_lm.rundir import promote
from behavior_lm.arguments import redacted

# weights, config and tokenizer first; then the run's own records
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "item_side.json")
# a LoRA run (model_type pretrained, lora_r > 0) holds an adapter over its base model instead of
# model.safetensors; runs trained with item_text keep their text projection (for update)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
EXTRA_FILES = ("floors.safetensors", "item_text.safetensors", "semantic_ids.json",
               "ranker_items.safetensors", "item_texts.json")
RUN_FILES = ("metrics.json", "recipe.yaml", "training_args.json", "log_history.json", "results.md",
             "training_curves.png")
TRAINING_ARGS_SHOWN = ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                       "gradient_accumulation_steps", "warmup_steps", "weight_decay",
                       "lr_scheduler_type", "optim", "seed", "bf16", "fp16",
                       "train_sampling_strategy", "metric_for_best_model", "early_stopping_patience")


def _load_run(run: Path) -> tuple[dict, dict, dict]:
    ensemble = (run / "members").is_dir()          # weights in members/<name>/ (behavior-lm ensemble)
    adapter = (run / ADAPTER_FILES[0]).is_file()   # weights = adapter_model.safetensors over the base
    weights = () if ensemble else ADAPTER_FILES if adapter else ("model.safetensors",)
    for name in ("config.json", "tokenizer.json", "metrics.json", "recipe.yaml", *weights):
        if not (run / name).is_file():
            raise RecipeError(f"{run}: not a finished run directory (no {name})")
    metrics = json.loads((run / "metrics.json").read_text())
    recipe = yaml.safe_load((run / "recipe.yaml").read_text()) or {}
    args_path = run / "training_args.json"
    training_args = json.loads(args_path.read_text()) if args_path.is_file() else {}
    return metrics, recipe, training_args


def _card_metadata(metrics: dict, repo_id: str | None) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    task, dataset = metrics.get("task", "next-item"), metrics["data"]["dataset"]
    results = []
    for name in get_task(task).card_metrics:
        if name in metrics.get("test", {}):
            results.append(EvalResult(
                task_type=task, task_name=task, dataset_type=dataset, dataset_name=dataset,
                dataset_split="test", metric_type=name, metric_name=name.upper(),
                metric_value=round(float(metrics["test"][name]), 4)))
    text = metrics.get("model", {}).get("text_serialization")
    lora = bool(text and text.get("lora"))
    data = ModelCardData(
        library_name="peft" if lora else "transformers", license="other",
        base_model=text["base_model"] if text else None,
        tags=["behavior-lm", "recommendation", "sequential-recommendation", task,
              metrics.get("model_type", "model"), *(["lora"] if lora else [])],
        model_name=repo_id or f"{metrics.get('model_type')}-{dataset}",
        eval_results=results or None)
    return data.to_yaml()


def _usage(task: str, repo_id: str, text: dict | None = None, labels: int = 2) -> str:
    kind = get_task(task)
    if text and kind.ranking:                # a pretrained LM ranking the catalogue by item text
        lora = text.get("lora")
        return (
            "```python\n"
            "import behavior_lm  # registers the next-behavior pipeline and the text ranker\n"
            "from transformers import pipeline\n\n"
            f'recommend = pipeline("next-behavior", model="{repo_id}")\n'
            'recommend(["1", "50", "260"], top_k=10)   # item ids of one history\n\n'
            "from behavior_lm.models.text_ranker import load_text_ranker\n"
            f'model = load_text_ranker("{repo_id}")   # '
            + ("the adapter over its base encoder" if lora else "the whole checkpoint") + "\n```\n\n"
            f"The history is written as text from the items' {', '.join(text.get('fields', []))} "
            f"(`{text.get('verb', 'watched')}: A; B; ...`, at most {text.get('max_length')} tokens, the oldest "
            f"cut first) and read by `{text.get('base_model')}`; items are scored against their own text "
            "embeddings by the same encoder (`ranker_items.safetensors`, frozen; the texts are in "
            "`item_texts.json`)"
            + (f". LoRA r={lora['r']}, alpha={lora['alpha']} on {', '.join(lora['target_modules'])}: this "
               "repository holds the adapter and the scoring head; the base encoder's weights are loaded "
               "from the base model named in `adapter_config.json`" if lora else "") + ".\n")
    if text:                                        # a pretrained model reading histories as text
        auto = "AutoPeftModelForSequenceClassification" if text.get("lora") else "AutoModelForSequenceClassification"
        module = "peft" if text.get("lora") else "transformers"
        return (
            "```python\n"
            f"from {module} import {auto}\n"
            "from transformers import AutoTokenizer\n\n"
            f'model = {auto}.from_pretrained("{repo_id}", num_labels={labels}'
            + (', problem_type="regression")\n' if kind.regression else ")\n")
            + f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")  # truncates from the left\n'
            f'text = {text.get("example", "")[:160] + "..."!r}\n'
            "model(**tokenizer(text, truncation=True, return_tensors=\"pt\")).logits\n"
            "```\n\n"
            f"Histories are written as text from the items' {', '.join(text.get('fields', []))} "
            f"(`{text.get('verb', 'watched')}: A; B; ... || next: C`), at most {text.get('max_length')} "
            f"tokens, the oldest events cut first. Base model: `{text.get('base_model')}`"
            + (f"; LoRA r={text['lora']['r']}, alpha={text['lora']['alpha']} on "
               f"{', '.join(text['lora']['target_modules'])} (the adapter and the classification head are "
               "what this repository holds)" if text.get("lora") else "") + ".\n")
    if kind.ranking:
        return (
            "```python\n"
            "import behavior_lm  # registers the next-behavior pipeline and the GRU/LSTM classes\n"
            "from transformers import pipeline\n\n"
            f'recommend = pipeline("next-behavior", model="{repo_id}")\n'
            'recommend(["50", "172", "133"], top_k=10)          # item ids of one history\n'
            'recommend([("4021", "pv"), ("4021", "cart")], behavior="buy")  # multi-behavior logs\n'
            "```\n\nor from a shell: `behavior-lm predict "
            f'{repo_id} --history "50 172 133"`.\n')
    return (
        "```python\n"
        "import behavior_lm  # registers the GRU/LSTM classes\n"
        "from transformers import pipeline\n\n"
        f'classify = pipeline("{"token-classification" if kind.token_level else "text-classification"}", '
        f'model="{repo_id}")\n'
        + ('classify("i:50 i:172 i:133")\n' if not kind.pair_input else
           'classify({"text": "i:50 i:172 i:133", "text_pair": "i:181"})  # history, candidate item\n')
        + "```\n")


def model_card(run_dir: str | Path, repo_id: str | None = None) -> str:
    """The ``README.md`` (YAML metadata + Markdown) for a finished run directory."""
    run = Path(run_dir)
    metrics, recipe, training_args = _load_run(run)
    repo_id = repo_id or str(run)
    protocol = EvalProtocol.from_dict(metrics["protocol"])
    data = metrics["data"]
    task, model_type = metrics.get("task", "next-item"), metrics.get("model_type", "model")
    raw, prep, split = data.get("raw", {}), data.get("prepared", {}), data.get("split", {})
    train = metrics.get("train", {})
    preprocessing = [
        f"exact duplicates dropped: {recipe.get('dedupe', True)}",
        f"minimum rating kept: {recipe.get('min_rating')}" if recipe.get("min_rating") is not None else None,
        f"k-core: users >= {recipe.get('min_user_events', 0)} events, "
        f"items >= {recipe.get('min_item_events', 0)} events (iterated to a fixed point)",
        f"most recent {recipe['max_history']} events per user" if recipe.get("max_history") else None,
        "events in time order (stable for equal timestamps)",
        f"behavior tokens in the stream: {data.get('with_behaviors')} "
        f"(behaviors: {', '.join(prep.get('behaviors', []))})",
        f"sequences of at most {recipe.get('max_length', protocol.max_length)} tokens, most recent kept",
    ]
    protocol_rows = [
        ("split", protocol.split.replace("_", "-")), ("target", protocol.target),
        ("candidates", f"{protocol.candidates} catalogue ({prep.get('items', '?')} items)"
         if protocol.candidates == "full" else protocol.candidates),
        ("seen items", "filtered from the ranking (the target never is)" if protocol.filter_seen
         else "kept in the ranking (repeat consumption counts)"),
        ("ties", f"{protocol.ties}: rank = number of other items scoring >= the target"),
        ("cut-offs K", ", ".join(map(str, protocol.ks))), ("history length", f"{protocol.max_length} tokens"),
        *([("next item on a multi-behavior stream",
            "mixture over next behaviors, sum_b P(b|h) P(item|h,b)" if protocol.behavior_scoring == "mixture"
            else "ranked given the target's behavior token (e.g. <buy>)")]
          if protocol.behavior_scoring != "none" else []),
        ("test examples", metrics["test"].get("num_examples", "")),
    ]
    shown = {k: training_args[k] for k in TRAINING_ARGS_SHOWN if k in training_args}
    best = train.get("best_epoch")
    training = [
        "## Training", "",
        f"- {train.get('epochs_run', '?')} epochs in {train.get('seconds', '?')} s on "
        f"{train.get('world_size', 1)} process(es); best validation "
        f"{training_args.get('metric_for_best_model', 'metric')} at epoch {best}; "
        f"{train.get('parameters', 0) / 1e6:.2f}M parameters", "",
        "| argument | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in shown.items()], "",
        "The complete arguments are in `training_args.json`, the recipe in `recipe.yaml`; "
        "`behavior-lm train recipe.yaml` reproduces the run.", "",
        "![training curves](training_curves.png)", ""]
    semantic = metrics.get("model", {}).get("semantic_ids")
    if semantic:
        training += [
            "## Semantic ids", "",
            f"Items are codes, not tokens: {semantic['levels']} levels of residual k-means over the "
            f"`{semantic.get('encoder')}` embeddings of the items' text ({', '.join(semantic.get('fields') or [])}) "
            f"with {semantic['codebook_size']} clusters each, and a collision index "
            f"(collision rate {semantic['collision_rate']:.3f}, largest group {semantic['largest_collision']}). "
            "The model generates the next item's code; beam search constrained to real codes "
            f"({semantic['beams']} beams) is the ranking, "
            f"{semantic.get('decode_ms_per_user', '?')} ms per test user here. The item <-> code table is "
            "`semantic_ids.json`; `pipeline(\"next-behavior\")` reads it and returns raw item ids.", ""]
    if "ensemble" in metrics:
        ens, fit = metrics["ensemble"], metrics.get("fit")
        member_tests = metrics.get("members", {}).get("test", {})
        training = [
            "## Members", "",
            f"Fusion method: `{ens['method']}`"
            + (f"; weights fitted on {fit['examples']} validation examples ({fit['objective']})" if fit else "")
            + ". Each member's own weights are in `members/<name>/`, the floors' counts in "
            "`floors.safetensors`.", "",
            "| member | kind | weight | test NDCG@10 / accuracy / MAE |", "|---|---|---:|---:|",
            *[f"| {m['name']} | {m.get('model_type') or m.get('floor')} | {ens['weights'][m['name']]:.3f} | "
              + next((f"{member_tests.get(m['name'], {})[k]:.4f}" for k in ("ndcg@10", "accuracy", "mae")
                      if k in member_tests.get(m['name'], {})), "") + " |" for m in ens["members"]], ""]
    parts = [
        "---", _card_metadata(metrics, repo_id).strip(), "---", "",
        f"# {model_type} · {task} on {data['dataset']}", "",
        f"A `{model_type}` model trained with behavior-lm on the "
        f"`{data['dataset']}` user-behavior log for **{task}**. The item vocabulary is the "
        "tokenizer saved next to the weights (`i:<item id>` tokens; `<behavior>` tokens on "
        "multi-behavior logs).", "",
        "## Data", "",
        f"- Source: `{data['dataset']}` (file `{Path(str(data.get('source', ''))).name}`)",
        f"- Terms: {data.get('terms', 'see the data source')}",
        f"- Raw: {raw.get('events', '?')} events, {raw.get('users', '?')} users, {raw.get('items', '?')} items; "
        f"after preprocessing: {prep.get('events', '?')} events, {prep.get('users', '?')} users, "
        f"{prep.get('items', '?')} items", "",
        "Preprocessing:", "", *[f"- {p}" for p in preprocessing if p], "",
        "## Evaluation protocol", "", "| | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in protocol_rows], "",
        f"Split sizes: {json.dumps(split)}", "",
        "## Results (test split)", "", results_table(metrics), "",
        "Floors are scored by the same harness on the same split; a model is useful only above them.", "",
        *training,
        "## Usage", "", _usage(task, repo_id, metrics.get("model", {}).get("text_serialization"),
                               1 if get_task(task).regression else max(2, len(data.get("class_names", [])))),
        "Weights are safetensors; the model classes are stock transformers classes or "
        "behavior-lm's own (registered with the Auto classes on `import behavior_lm`), so no "
        "`trust_remote_code` is needed.", "",
    ]
    return "\n".join(parts)


def stage_run(run_dir: str | Path, out_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write the folder that ``push`` uploads into ``out_dir`` (atomically: all or nothing)."""
    run, out = Path(run_dir), Path(out_dir)
    card = model_card(run, repo_id)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in MODEL_FILES + ADAPTER_FILES + RUN_FILES + EXTRA_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, tmp / name)
    text = json.loads((run / "metrics.json").read_text()).get("model", {}).get("text_serialization")
    if text and (tmp / ADAPTER_FILES[0]).is_file():
        # the base model by its Hub name (a local path, e.g. the packaged MiniLM, means nothing there)
        adapter = json.loads((tmp / ADAPTER_FILES[0]).read_text())
        adapter["base_model_name_or_path"] = text["base_model"]
        (tmp / ADAPTER_FILES[0]).write_text(json.dumps(adapter, indent=2))
    if (run / "members").is_dir():                  # an ensemble: its members' own model files
        for member in sorted((run / "members").iterdir()):
            (tmp / "members" / member.name).mkdir(parents=True)
            for path in sorted(member.iterdir()):   # config, weights (sharded too), generation config
                if path.is_file() and (path.name in MODEL_FILES or path.name.startswith("model")):
                    shutil.copy2(path, tmp / "members" / member.name / path.name)
    # runs written before secrets were redacted may hold a hub_token: never upload it
    if (tmp / "recipe.yaml").is_file():
        recipe = yaml.safe_load((tmp / "recipe.yaml").read_text()) or {}
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(redacted(recipe), sort_keys=False))
    if (tmp / "training_args.json").is_file():
        args = json.loads((tmp / "training_args.json").read_text())
        (tmp / "training_args.json").write_text(json.dumps(redacted(args), indent=2))
    (tmp / "README.md").write_text(card)
    promote(tmp, out)
    return out


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
             commit_message: str = "Upload behavior-lm run") -> str:
    """Stage the run and upload it to the Hub as ``repo_id``; returns the commit URL."""
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="behavior-lm-push-") as tmp:
        folder = stage_run(run_dir, Path(tmp) / "upload", repo_id)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                     commit_message=commit_message)
        except Exception as exc:  # network, auth, offline mode: one clear line, nothing lost
            raise BehaviorLMError(f"push to the Hub as {repo_id!r} failed ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); the run in "
                                  f"{run_dir} is unchanged; `behavior-lm push {run_dir} --repo-id "
                                  f"{repo_id} --dry-run DIR` writes the folder locally") from exc
    return str(getattr(info, "commit_url", info))
