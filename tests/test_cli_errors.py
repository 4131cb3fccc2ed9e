"""Bad input through the real CLI: one line naming file, line and field; exit status 2."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from behavior_lm.cli.main import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart" / "gpt2-ml-100k.yaml"


def run_cli(capsys, data: Path, *extra: str) -> str:
    code = main(["train", str(QUICKSTART), "--data_path", str(data), "--dataset", "mine",
                 "--min_user_events", "0", "--min_item_events", "0", "--cache", "false",
                 "--output_dir", str(data.parent / "run"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("behavior-lm: error: ") and "\n" not in err, err
    assert not (data.parent / "run").exists()
    return err


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_missing_file(tmp_path, capsys):
    err = run_cli(capsys, tmp_path / "nope.csv")
    assert "nope.csv" in err and "not found" in err


def test_malformed_row(tmp_path, capsys):
    p = write(tmp_path, "u.data", "1\t10\t5\t100\n1\t11\t4\n")
    assert "u.data:2" in run_cli(capsys, p)


def test_wrong_column_mapping(tmp_path, capsys):
    p = write(tmp_path, "log.csv", "uid,iid,ts\n1,10,100\n")
    err = run_cli(capsys, p, "--columns", "user_id=user,item_id=iid,timestamp=ts")
    assert "log.csv:1" in err and "'user'" in err


def test_empty_log(tmp_path, capsys):
    p = write(tmp_path, "log.csv", "user_id,item_id,timestamp\n")
    assert "log.csv" in run_cli(capsys, p)


def test_user_with_single_event(tmp_path, capsys):
    rows = "".join(f"1,{i},{i}\n" for i in range(5)) + "2,3,9\n"
    p = write(tmp_path, "log.csv", "user_id,item_id,timestamp\n" + rows)
    err = run_cli(capsys, p)
    assert "log.csv:7" in err and "field 'user_id'" in err and "min_user_events" in err


def test_non_numeric_timestamp(tmp_path, capsys):
    p = write(tmp_path, "log.csv", "user_id,item_id,timestamp\n1,10,100\n1,11,soon\n")
    err = run_cli(capsys, p)
    assert "log.csv:3" in err and "field 'timestamp'" in err


def test_console_script_exit_status_and_no_traceback(tmp_path):
    exe = shutil.which("behavior-lm") or str(Path(__import__("sys").executable).with_name("behavior-lm"))
    if not Path(exe).exists():
        pytest.skip("behavior-lm console script not installed (run `make test`)")
    p = write(tmp_path, "log.csv", "user_id,item_id,timestamp\n1,10,100\n1,11,soon\n")
    proc = subprocess.run([exe, "train", str(QUICKSTART), "--data_path", str(p), "--dataset", "x",
                           "--cache", "false", "--output_dir", str(tmp_path / "run")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "log.csv:3: field 'timestamp'" in proc.stderr


def recipe_with(tmp_path: Path, key: str, value: str) -> Path:
    import re

    text = QUICKSTART.read_text()
    if re.search(rf"^{key}:", text, re.M):
        text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.M)
    else:
        text += f"{key}: {value}\n"
    return write(tmp_path, "recipe.yaml", text)


@pytest.mark.parametrize("key,value,says", [
    ("hidden_size", "-4", "key 'hidden_size' must be a positive integer"),
    ("num_train_epochs", "lots", "key 'num_train_epochs' must be a number"),
    ("hidden_size", "[128]", "key 'hidden_size' must be an integer"),
    ("model_type", "gpt3", "key 'model_type' must be one of gpt2, llama, gru, lstm, bert4rec"),
    ("split", "random", "key 'split' must be one of leave_one_out, temporal"),
    ("dropout", "1.5", "key 'dropout' must be in [0, 1)"),
    ("num_heads", "3", "key 'num_heads' must be a divisor of hidden_size"),
    ("eval_ks", "[5, x]", "key 'eval_ks' must be a list whose items are each an integer"),
    ("max_length", "0", "key 'max_length' must be a positive integer"),
])
def test_bad_recipe_values_are_one_line_naming_file_line_and_key(key, value, says, tmp_path, capsys):
    recipe = recipe_with(tmp_path, key, value)
    assert main(["train", str(recipe), "--output_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"recipe.yaml:" in err and says in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_duplicated_recipe_key_and_bad_flags(tmp_path, capsys):
    recipe = write(tmp_path, "recipe.yaml", QUICKSTART.read_text() + "seed: 7\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "recipe.yaml:" in err and "key 'seed' is given twice (first on line" in err
    for flags, says in ((["--num_train_epochs", "lots"], "flag --num_train_epochs: invalid float value: 'lots'"),
                        (["--hidden_size", "-3"], "flag --hidden_size must be a positive integer"),
                        (["--max_length", "64", "128"], "unexpected arguments: 128")):
        assert main(["train", str(QUICKSTART), *flags, "--output_dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and says in err, err


def test_prepare_command_prepares_only(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(tmp_path / "cache"))
    p = write(tmp_path, "log.csv", "user_id,item_id,timestamp\n" + "".join(f"u{u},{(u + j) % 7},{j}\n"
                                                                         for u in range(5) for j in range(6)))
    assert main(["prepare", str(QUICKSTART), "--data_path", str(p), "--dataset", "mine",
                 "--min_user_events", "0", "--min_item_events", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prepared"]["users"] == 5 and out["prepared"]["events"] == 30 and out["cache_hit"] is False
    assert any((tmp_path / "cache" / "prepared").iterdir()) and not (tmp_path / "runs").exists()


LIGHT_RUN = """
import os, sys
sys.argv = ["behavior-lm", *sys.argv[1:]]
import behavior_lm_cli
try:
    behavior_lm_cli.main()
except SystemExit as exc:
    heavy = sorted(m for m in ("torch", "transformers", "datasets") if m in sys.modules)
    print(exc.code, ",".join(heavy) or "-", os.environ.get("BEHAVIOR_LM_DEFER_REGISTRATION", "unset"))
"""


@pytest.mark.parametrize("args,says", [
    (["--help"], None),
    (["train", "{typo}"], "typo.yaml:2: unknown key 'hiden_size' (did you mean: hidden_size?)"),
    (["train", "{quick}", "--hidden_size", "-3"], "flag --hidden_size must be a positive integer, got -3"),
    (["prepare", "{quick}", "--hiden_size", "3"], "unknown option '--hiden_size'"),
    (["train", "{range}"], "range.yaml:2: key 'dropout' must be in [0, 1), got 1.5"),
    (["train", "{missing}"], "missing.yaml: recipe not found"),
])
def test_cheap_errors_fail_before_torch_is_imported(args, says, tmp_path):
    """The console script checks a recipe before the 5-7 s imports of torch/transformers/datasets
    (``behavior_lm_cli`` defers the package's registrations), and the deferral does not leak into
    the environment of what the command starts."""
    paths = {"typo": write(tmp_path, "typo.yaml", "dataset: ml-100k\nhiden_size: 4\n"),
             "range": write(tmp_path, "range.yaml", "dataset: ml-100k\ndropout: 1.5\n"),
             "quick": QUICKSTART, "missing": tmp_path / "missing.yaml"}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    proc = subprocess.run([__import__("sys").executable, "-c", LIGHT_RUN, *argv], capture_output=True, text=True)
    code, heavy, env = proc.stdout.strip().splitlines()[-1].split()
    assert heavy == "-", f"imported {heavy} before failing: {proc.stderr}"
    assert env == "unset"
    if says is None:
        assert code == "0" and "usage: behavior-lm" in proc.stdout
    else:
        assert code == "2" and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_import_behavior_lm_registers_everything():
    """Without the console script's deferral, ``import behavior_lm`` registers the GRU/LSTM
    classes, the tasks and ``pipeline("next-behavior")``, as user code expects."""
    code = ("import behavior_lm\nfrom transformers import AutoConfig\nfrom transformers.pipelines import PIPELINE_REGISTRY\n"
            "from behavior_lm.tasks import task_names\n"
            "print('next-behavior' in PIPELINE_REGISTRY.get_supported_tasks(), 'next-item' in task_names(),\n"
            "      type(AutoConfig.for_model('behavior-rnn')).__name__, behavior_lm.train.__module__)")
    proc = subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["True", "True", "BehaviorRNNConfig", "behavior_lm.training.run"], proc.stderr
