"""End to end on real data (ml-100k, a slice): recipe -> Trainer -> run directory -> evaluate.

Small enough for CI (a slice of users, a tiny model, two epochs) but every part is the real one:
the named-source resolution, the tokenizer, the Trainer, the harness and the CLI.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from behavior_lm.cli.main import main
from behavior_lm.evaluation.run_eval import evaluate_run

from conftest import QUICKSTART, TINY

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run


def test_run_directory_is_complete(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "recipe.yaml", "training_args.json", "metrics.json", "results.md",
            "training_curves.png", "log_history.json"} <= names
    assert "checkpoints" not in names and not any(n.endswith(".bin") for n in names)
    assert not run_dir.with_name(run_dir.name + ".partial").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["protocol"]["candidates"] == "full" and metrics["protocol"]["filter_seen"] is True
    for split in ("test", "validation"):
        for k in (5, 10, 20):
            for m in ("hr", "ndcg", "mrr"):
                assert 0.0 <= metrics[split][f"{m}@{k}"] <= 1.0
    assert metrics["test"]["num_examples"] == metrics["test"]["num_ranked"] == 60
    assert metrics["data"]["prepared"]["users"] == 60
    assert "popularity" in metrics["baselines"]["test"]
    assert metrics["train"]["epochs_run"] == 2
    table = (run_dir / "results.md").read_text()
    assert "| gpt2 (" in table and "| popularity (floor) |" in table
    assert (run_dir / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_auto_classes_load_the_run(run_dir):
    tok = AutoTokenizer.from_pretrained(run_dir)
    model = AutoModelForCausalLM.from_pretrained(run_dir)
    assert model.config.vocab_size == len(tok)
    assert model.config.model_type == "gpt2"


def test_evaluate_reproduces_training_metrics(run_dir):
    results, protocol = evaluate_run(run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    ours = results["gpt2"]
    for k in protocol.ks:
        for m in ("hr", "ndcg", "mrr"):
            assert ours[f"{m}@{k}"] == pytest.approx(saved["test"][f"{m}@{k}"], abs=1e-6)
    pop = results["popularity (floor)"]
    assert pop["ndcg@10"] == pytest.approx(saved["baselines"]["test"]["popularity"]["ndcg@10"])


def test_existing_run_is_not_overwritten(run_dir, capsys):
    recipe = REPO / "recipes" / "next-item" / "gpt2-beauty.yaml"  # overwrite_output_dir: false
    assert main(["train", str(recipe), "--output_dir", str(run_dir)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_crash_then_resume(tmp_path):
    """Kill a run (SIGKILL) after its first checkpoint: nothing looks finished; the rerun resumes
    and ends exactly where an uninterrupted run ends."""
    out = tmp_path / "resumable"
    partial = out.with_name("resumable.partial")
    cmd = [sys.executable, "-m", "behavior_lm.cli.main", "train", str(QUICKSTART), *TINY,
           "--num_train_epochs", "6", "--early_stopping_patience", "0", "--output_dir", str(out)]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            # the training time is the last file a checkpoint gets (after the Trainer's own)
            done = list(partial.glob("checkpoints/checkpoint-*/time_budget.json"))
            if done or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "metrics.json").exists() and partial.is_dir()
    first_segment = max(json.loads(p.read_text())["train_seconds"]
                        for p in partial.glob("checkpoints/checkpoint-*/time_budget.json"))
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr
    # reloading checkpoints of a tied model (resume, best model) says nothing about lm_head.weight
    assert "missing keys" not in rerun.stderr, rerun.stderr[-2000:]
    assert (out / "metrics.json").is_file() and not partial.exists()
    history = json.loads((out / "log_history.json").read_text())
    assert max(h.get("epoch", 0) for h in history) == pytest.approx(6)
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert train["seconds"] > first_segment > 0      # reported time covers both segments
    assert train["stopped_by"] == "epoch cap"

    # the same command, never interrupted, twice: a seeded run is byte-identical to itself, and the
    # killed-and-resumed run ends byte-identical to it (weights and test metrics); its train_loss
    # covers both segments (the Trainer's own covers the resumed one only)
    straight = []
    for name in ("straight-1", "straight-2"):
        other = [a if a != str(out) else str(tmp_path / name) for a in cmd]
        done = subprocess.run(other, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        straight.append(tmp_path / name)
    weights = [(d / "model.safetensors").read_bytes() for d in (*straight, out)]
    assert weights[0] == weights[1], "two runs with one seed differ"
    assert weights[2] == weights[0], "the resumed run's weights differ from the uninterrupted run's"
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (*straight, out)]
    timing = ("runtime", "samples_per_second", "steps_per_second")
    scores = [{k: v for k, v in m["test"].items() if k not in timing} for m in metrics]
    assert scores[0] == scores[1] == scores[2] and "ndcg@10" in scores[0]
    assert metrics[2]["train"]["train_loss"] == pytest.approx(metrics[0]["train"]["train_loss"], abs=2e-4)


def test_a_resumed_run_keeps_counting_towards_its_patience(tmp_path):
    """A checkpoint saved 2 evaluations after the best, patience 3: the resumed run must stop at
    its first evaluation without improvement, as the run would have left alone. (The Trainer's
    default restores the best metric but counts patience from zero again, so the run went on for
    3 more epochs.)"""
    first = tmp_path / "first"
    assert main(["train", str(QUICKSTART), *TINY, "--early_stopping_patience", "3",
                 "--keep_checkpoints", "true", "--output_dir", str(first)]) == 0
    saved = max(first.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    resumed = tmp_path / "resumed"
    copy = resumed.with_name("resumed.partial") / "checkpoints" / saved.name
    shutil.copytree(saved, copy)
    state_file = copy / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["best_metric"] = 2.0                   # above any NDCG: no later evaluation improves on it
    state["best_model_checkpoint"] = str(copy)
    state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"] = 2
    state_file.write_text(json.dumps(state))
    assert main(["train", str(QUICKSTART), *TINY, "--num_train_epochs", "6", "--early_stopping_patience", "3",
                 "--output_dir", str(resumed)]) == 0
    train = json.loads((resumed / "metrics.json").read_text())["train"]
    assert train["stopped_by"] == "early stopping (patience 3)"
    assert train["epochs_run"] == pytest.approx(state["epoch"] + 1)


def test_time_budget_stops_after_a_validation(tmp_path):
    """A budget shorter than one epoch: the first epoch is still validated and kept, then the
    run stops and says why; without the budget the same recipe runs its 4 epochs."""
    out = tmp_path / "budget"
    assert main(["train", str(QUICKSTART), *TINY, "--num_train_epochs", "4", "--early_stopping_patience", "0",
                 "--max_train_minutes", "0.0001", "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["epochs_run"] == 1 and metrics["train"]["best_epoch"] == 1
    assert metrics["train"]["stopped_by"] == "time budget (0.0001 min)"
    assert 0 <= metrics["test"]["ndcg@10"] <= 1
    assert "stopped by time budget" in (out / "results.md").read_text()


@pytest.mark.parametrize("launch", [
    ["--multi_gpu"],                                                  # DDP over gloo
    ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "NO_WRAP"],   # FSDP2: parameters sharded
], ids=["ddp", "fsdp2"])
def test_accelerate_two_processes_match_one_process(tmp_path, launch):
    """`accelerate launch` runs the same CLI with 2 CPU processes over gloo, data-parallel (DDP) or
    with the parameters, gradients and optimizer state sharded (FSDP2). The run directory is
    written once, every test user is scored exactly once, and the result matches a 1-process run
    with the same global batch (2 x 8 = 16): same batches, gradients averaged over the tokens of
    both processes (the fused output loss is scaled as the stock loss is; it was not, and a
    2-process run logged half the loss). Tolerance: 1e-3 on the training loss and 0.02 on test
    NDCG@10 (float summation order differs between 1 and 2 processes; nothing else should). The
    weights the sharded run saved are whole: evaluating them again gives its test metrics."""
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed in this environment")
    same = ["--dropout", "0", "--train_sampling_strategy", "random", "--early_stopping_patience", "0",
            "--max_train_minutes", "600"]  # exercises the budget's rank-0 broadcast (never stops here)
    one = tmp_path / "one"
    assert main(["train", str(QUICKSTART), *TINY, *same, "--output_dir", str(one)]) == 0
    out = tmp_path / "ddp"
    cmd = [str(accelerate), "launch", *launch, "--num_processes", "2", "-m",
           "behavior_lm.cli.main", "train", str(QUICKSTART), *TINY, *same,
           "--per_device_train_batch_size", "8", "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # ranks gathered from both processes: one per user, none duplicated by shard padding
    assert metrics["test"]["num_examples"] == metrics["test"]["num_ranked"] == 60
    assert metrics["validation"]["num_ranked"] == 60
    assert not out.with_name("ddp.partial").exists()
    # really data-parallel (not two processes each training alone on all the data)
    assert metrics["train"]["world_size"] == 2
    single = json.loads((one / "metrics.json").read_text())
    assert metrics["train"]["global_steps"] == single["train"]["global_steps"]
    assert metrics["train"]["train_loss"] == pytest.approx(single["train"]["train_loss"], abs=1e-3)
    assert metrics["test"]["ndcg@10"] == pytest.approx(single["test"]["ndcg@10"], abs=0.02)
    from behavior_lm.evaluation.run_eval import evaluate_run

    rescored, _ = evaluate_run(out)
    assert rescored["gpt2"]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"], abs=1e-6)


def test_tensorboard_accumulation_and_recipe_push(tiny_run, tmp_path, capsys):
    """Trainer options are recipe keys: TensorBoard event files land in the run directory and
    gradient accumulation halves the optimizer steps. `push_to_hub` in a recipe pushes the
    finished run once; without a Hub the run is kept and the error is one line."""
    out = tmp_path / "tb"
    code = main(["train", str(QUICKSTART), *TINY, "--report_to", "tensorboard",
                 "--gradient_accumulation_steps", "2", "--push_to_hub", "true",
                 "--hub_model_id", "me/tiny-tb", "--output_dir", str(out)])
    assert code == 2 and "push to the Hub as 'me/tiny-tb' failed" in capsys.readouterr().err
    assert (out / "metrics.json").is_file()                       # the finished run is kept
    assert list((out / "logs").glob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    base = json.loads((tiny_run / "metrics.json").read_text())["train"]["global_steps"]  # same run, no accumulation
    epochs = int(metrics["train"]["epochs_run"])
    assert base // 2 <= metrics["train"]["global_steps"] <= base // 2 + epochs
    assert main(["train", str(QUICKSTART), *TINY, "--push_to_hub", "true",
                 "--output_dir", str(tmp_path / "x")]) == 2
    assert "hub_model_id" in capsys.readouterr().err


def test_compare_two_models_one_table(tmp_path, capsys):
    gru = REPO / "recipes" / "next-item" / "gru-ml-100k.yaml"
    bert = REPO / "recipes" / "next-item" / "bert4rec-ml-100k.yaml"
    out = tmp_path / "cmp"
    assert main(["compare", str(gru), str(bert), "--output_dir", str(out), *TINY]) == 0
    table = (out / "comparison.md").read_text()
    for row in ("| gru-ml-100k |", "| bert4rec-ml-100k |", "| popularity (floor) |", "| markov (floor) |"):
        assert row in table
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "comparison.json").read_text())
    assert data["models"]["bert4rec-ml-100k"]["model_type"] == "bert4rec"
    # a second call reuses the finished runs (no retraining) and a different split is refused
    mtime = (out / "gru-ml-100k" / "metrics.json").stat().st_mtime
    assert main(["compare", str(gru), "--output_dir", str(out), *TINY]) == 0
    assert (out / "gru-ml-100k" / "metrics.json").stat().st_mtime == mtime
    capsys.readouterr()
    beauty = REPO / "recipes" / "next-item" / "gpt2-beauty.yaml"
    assert main(["compare", str(gru), str(beauty), "--output_dir", str(tmp_path / "x")]) == 2
    assert "data settings differ" in capsys.readouterr().err


@pytest.mark.parametrize("task,model_type,key", [("next-class", "bert", "f1_macro"),
                                                  ("next-rating", "gru", "mae"),
                                                  ("event-class", "bert", "f1_macro")])
def test_task_runs_and_evaluate(task, model_type, key, tmp_path):
    out = tmp_path / task
    assert main(["train", str(QUICKSTART), *TINY, "--task", task, "--model_type", model_type,
                 "--output_dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task and key in metrics["test"]
    floor = "training mean" if task == "next-rating" else "majority class"
    assert floor in metrics["baselines"]["test"]
    assert f"| {floor} (floor) |" in (out / "results.md").read_text()
    results, _ = evaluate_run(out)
    assert results[model_type][key] == pytest.approx(metrics["test"][key], abs=1e-6)
    if task == "next-class":  # the stock text-classification pipeline reads the run as it is
        from transformers import pipeline

        clf = pipeline("text-classification", model=str(out))
        pred = clf({"text": "i:1 i:50 i:100", "text_pair": "i:181"})
        pred = pred[0] if isinstance(pred, list) else pred
        assert pred["label"] in metrics["data"]["class_names"] and 0.0 <= pred["score"] <= 1.0
    if task == "event-class":
        from transformers import pipeline

        tagger = pipeline("token-classification", model=str(out))
        tags = tagger("i:1 i:50 i:100")
        assert {t["entity"] for t in tags} <= set(metrics["data"]["class_names"])


def test_anchor_table_script_prints_runs_floors_and_plot(run_dir, tmp_path):
    """scripts/anchor_table.py is how docs/benchmarks.md gets its anchor tables and chart."""
    png, curves = tmp_path / "anchors.png", tmp_path / "curves.png"
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "anchor_table.py"), str(run_dir),
                          "--plot", str(png), "--curves", str(curves)],
                         capture_output=True, text=True, check=True).stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [line for line in out.splitlines() if line.startswith("| ml-100k |")]
    assert rows[0].startswith(f"| ml-100k | behavior-lm gpt2 (") and f"{metrics['test']['ndcg@10']:.4f}" in rows[0]
    assert metrics["train"]["stopped_by"] in rows[0]
    assert [r.split(" | ")[1] for r in rows[1:]] == [f"{n} floor (ours)" for n in metrics["baselines"]["test"]]
    assert png.read_bytes()[:4] == curves.read_bytes()[:4] == b"\x89PNG"
