"""Secrets and paths: nothing we write escapes the cache, no token is written or uploaded."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from behavior_lm.cli.main import main
from behavior_lm.data.pipeline import cache_folder_name, prepare_data
from behavior_lm.hub import stage_run
from behavior_lm.arguments import DataArguments

from conftest import QUICKSTART, TINY


def tiny_log(folder: Path) -> Path:
    rows = ["user_id,item_id,timestamp"] + [f"u{u},{(u * 3 + j) % 9},{j}" for u in range(6) for j in range(6)]
    path = folder / "log.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/absolute-escape", "a/b\\c", "..", "x\x00y", "", "ok-name"])
def test_dataset_label_cannot_escape_the_cache(name, tmp_path, monkeypatch):
    cache, outside = tmp_path / "deep" / "er" / "cache", tmp_path / "data"
    outside.mkdir()
    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(cache))
    before = set(tmp_path.rglob("*"))
    args = DataArguments(dataset=name, data_path=str(tiny_log(outside)), data_format="table", max_length=8)
    prepare_data(args)
    written = set(tmp_path.rglob("*")) - before - {outside / "log.csv"}
    assert written and all(cache in p.parents or p == cache or p in cache.parents for p in written)
    folder = cache_folder_name(name, "k")
    assert "/" not in folder and "\\" not in folder and "\x00" not in folder and not folder.startswith(".")


def test_hub_token_is_never_written_nor_staged(tiny_run, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(QUICKSTART), *TINY, "--num_train_epochs", "1", "--max_users", "30",
                 "--hub_token", "hf_SECRET123", "--output_dir", str(out)]) == 0
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".json", ".md"):
            assert "hf_SECRET123" not in f.read_text(errors="ignore"), f
    # a run written by an older version, with the token in its recipe: push stages it redacted
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    recipe = yaml.safe_load((old / "recipe.yaml").read_text())
    (old / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "hub_token": "hf_OLDSECRET"}))
    staged = stage_run(old, tmp_path / "upload")
    assert yaml.safe_load((staged / "recipe.yaml").read_text())["hub_token"] == "<redacted>"
    assert all("hf_OLDSECRET" not in f.read_text(errors="ignore") for f in staged.iterdir() if f.is_file())
    assert json.loads((staged / "metrics.json").read_text()) == json.loads((old / "metrics.json").read_text())


def test_importing_behavior_lm_leaves_the_matplotlib_backend_alone():
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import behavior_lm, behavior_lm.reporting, "
            "behavior_lm.compare; print(matplotlib.get_backend())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().lower() == "svg"
