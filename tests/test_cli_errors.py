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
