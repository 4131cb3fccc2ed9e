"""The run directory: refusing what would destroy a user's files, one writer at a time, resuming
only from checkpoints whose weights are whole."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from behavior_lm.cli.main import main
from behavior_lm.rundir import last_complete_checkpoint, safetensors_complete

from conftest import QUICKSTART, TINY


def train_into(out: Path, capsys) -> tuple[int, str]:
    code = main(["train", str(QUICKSTART), *TINY, "--max_users", "20", "--num_train_epochs", "1",
                 "--output_dir", str(out)])
    return code, capsys.readouterr().err.strip()


def test_output_dir_that_is_a_file_or_a_foreign_folder_is_refused(tmp_path, capsys):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    code, err = train_into(user_file, capsys)
    assert code == 2 and "is an existing file" in err and "\n" not in err
    assert user_file.read_text() == "mine" and not (tmp_path / "notes.txt.partial").exists()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_text("meow")
    code, err = train_into(folder, capsys)
    assert code == 2 and "holds something other than a run" in err
    assert (folder / "cat.jpg").read_text() == "meow"
    code, err = train_into(user_file / "run", capsys)                 # a path through a file
    assert code == 2 and "is a file, not a folder" in err


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    lock = tmp_path / "run.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(other.pid))
        code, err = train_into(out, capsys)
        assert code == 2 and f"being written by another run (pid {other.pid}" in err and "\n" not in err
        assert not out.exists() and not (tmp_path / "run.partial").exists()
    finally:
        other.kill()
        other.wait()
    lock.write_text(str(other.pid))                                  # its writer is gone: stale
    code, err = train_into(out, capsys)
    assert code == 0, err
    assert (out / "metrics.json").is_file() and not lock.exists()


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    for step in (10, 20):
        ck = tmp_path / f"checkpoint-{step}"
        ck.mkdir()
        save_file({"w": torch.randn(64, 64)}, str(ck / "model.safetensors"))
        (ck / "trainer_state.json").write_text('{"global_step": %d}' % step)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    weights = tmp_path / "checkpoint-20" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])                       # half written
    assert not safetensors_complete(weights)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text("{not json")
    assert last_complete_checkpoint(tmp_path) is None
