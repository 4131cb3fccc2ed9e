"""``data_engine: ray`` (``behavior_lm.data.ray_engine``) prepares the same cache as the local
engine: the same rows in the same order, the same tokenizer and counts, from one file or from a
folder of files read in parallel; errors still name the file, line and field; a recipe it does not
cover is refused in one line; and a local run reads what Ray prepared as its cache."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from behavior_lm.arguments import DataArguments
from behavior_lm.data import pipeline
from behavior_lm.errors import DataError, RecipeError

ray = pytest.importorskip("ray", reason="data_engine: ray needs the extra behavior-lm[distributed]")

INFO_KEYS = ("raw", "prepared", "split", "rows", "stream", "with_behaviors", "class_names", "cache_key")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray (2 CPUs) for the module; ``prepare`` joins it instead of starting its own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def assert_same(local: pipeline.PreparedData, on_ray: pipeline.PreparedData) -> None:
    assert on_ray.tokenizer.get_vocab() == local.tokenizer.get_vocab()
    for key in INFO_KEYS:
        assert on_ray.info[key] == local.info[key], key
    assert list(on_ray.datasets) == list(local.datasets)
    for name in local.datasets:
        got, want = on_ray.datasets[name], local.datasets[name]
        assert got.features == want.features, name
        assert got.data.table.equals(want.data.table), name


def hostile_log(folder: Path, n_users: int = 240, n_items: int = 70, seed: int = 3) -> list[str]:
    """A multi-behavior CSV with what the cleaning must get right: exact duplicates, ties on the
    timestamp (file order decides), users interleaved in the file, rare items and short users for
    both sides of the k-core, long users for max_history. Returns its lines (header first)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(1, 40))
        items = rng.zipf(1.3, size=n) % n_items
        ts = 1_000 + np.sort(rng.integers(0, 30, size=n))        # many equal timestamps
        for i, t in zip(items, ts):
            rows.append((f"u{u}", f"i{i}", str(rng.choice(["pv", "pv", "pv", "cart", "buy"])), int(t)))
    order = rng.permutation(len(rows))                            # users interleave in the file
    rows = [rows[k] for k in order]
    rows += [rows[k] for k in rng.integers(0, len(rows), size=25)]  # exact duplicates, later lines
    lines = ["user_id,item_id,behavior,timestamp"] + [",".join(map(str, r)) for r in rows]
    (folder / "all.csv").write_text("\n".join(lines) + "\n")
    return lines


def split_into_files(lines: list[str], folder: Path, parts: int = 3) -> Path:
    """The same log as ``parts`` files in name order, each with the header."""
    folder.mkdir()
    body = lines[1:]
    cuts = np.linspace(0, len(body), parts + 1).astype(int)
    for k in range(parts):
        (folder / f"part-{k}.csv").write_text("\n".join([lines[0]] + body[cuts[k]:cuts[k + 1]]) + "\n")
    return folder


def test_ml100k_same_cache_as_the_local_engine(cache):
    args = DataArguments(dataset="ml-100k", max_length=50, min_user_events=5, min_item_events=5)
    local = pipeline.prepare_data(dataclasses.replace(args, cache=False))
    on_ray = pipeline.prepare_data(dataclasses.replace(args, data_engine="ray", data_partitions=3))
    assert on_ray.info["engine"] == "ray"
    assert_same(local, on_ray)
    # the engine is not part of the key: a local run of the recipe reads what Ray wrote
    again = pipeline.prepare_data(args)
    assert again.info["cache_hit"] and again.info["cache_key"] == on_ray.info["cache_key"]
    assert again.datasets["test"].data.table.equals(local.datasets["test"].data.table)


@pytest.mark.parametrize("max_length,windows,template", [(21, "all", "causal"), (9, "last", "masked")])
def test_folder_of_files_on_ray_equals_one_file_locally(cache, tmp_path, max_length, windows, template):
    """Duplicates, the k-core on both sides, ties and max_history, multi-behavior streams with an
    odd and a short max_length; the folder's files read in parallel into 4 partitions."""
    lines = hostile_log(tmp_path)
    folder = split_into_files(lines, tmp_path / "parts")
    base = dict(dataset="hostile", max_length=max_length, train_windows=windows, min_user_events=4,
                min_item_events=3, max_history=25)
    local = pipeline.prepare_data(DataArguments(**base, data_path=str(tmp_path / "all.csv"), cache=False),
                                  template=template)
    on_ray = pipeline.prepare_data(DataArguments(**base, data_path=str(folder), data_engine="ray",
                                                 data_partitions=4), template=template)
    assert local.info["prepared"]["duplicates_dropped"] > 0 and local.with_behaviors
    for key in INFO_KEYS:
        if key != "cache_key":                       # the key holds the path: one file vs a folder
            assert on_ray.info[key] == local.info[key] or key == "prepared", key
    assert {k: v for k, v in on_ray.info["prepared"].items() if k != "duplicate_lines"} == \
        {k: v for k, v in local.info["prepared"].items() if k != "duplicate_lines"}
    for name in local.datasets:
        assert on_ray.datasets[name].data.table.equals(local.datasets[name].data.table), name
    assert on_ray.tokenizer.get_vocab() == local.tokenizer.get_vocab()


def test_bad_row_names_its_own_file_and_line(cache, tmp_path):
    lines = hostile_log(tmp_path)
    folder = split_into_files(lines, tmp_path / "parts")
    second = folder / "part-1.csv"
    text = second.read_text().splitlines()
    text[6] = "u1,i2,pv,not-a-time"
    second.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError) as err:
        pipeline.prepare_data(DataArguments(dataset="hostile", data_path=str(folder), data_engine="ray"))
    assert err.value.path == str(second) and err.value.line == 7 and err.value.field == "timestamp"
    assert not any((cache / "prepared").glob("*/info.json"))       # nothing half-written in the cache


def test_recipes_it_does_not_cover_are_refused_in_one_line(cache, tmp_path):
    with pytest.raises(RecipeError, match="data_engine: ray prepares next-item rows"):
        pipeline.prepare_data(DataArguments(dataset="ml-100k", split="temporal", data_engine="ray"))
    lines = hostile_log(tmp_path)
    folder = split_into_files(lines, tmp_path / "parts")
    with pytest.raises(RecipeError, match="names several files"):
        pipeline.prepare_data(DataArguments(dataset="hostile", data_path=str(folder)))
