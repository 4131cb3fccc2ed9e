"""Semantic ids from item text: the catalogue's text embeddings -> residual k-means codes.

The embeddings are the recipe's ``item_text`` (the dataset's item table embedded by
``text_encoder``, an item file, or an ``embed-items`` table), exactly as for text-initialised item
rows. Items of the catalogue without text get a random unit vector (seeded by the item id), so
they spread over the clusters instead of piling into one and lengthening the collision level;
the record says how many there were.
"""
from __future__ import annotations

import hashlib
import logging
import time

import torch
from transformers import PreTrainedTokenizerBase

from behavior_lm.arguments import ModelArguments
from behavior_lm.errors import RecipeError
from behavior_lm.models.text_encoder import item_text_table
from behavior_lm.tokenization.behavior_tokenizer import catalogue
from behavior_lm.tokenization.semantic_ids import SemanticIds, residual_kmeans

logger = logging.getLogger(__name__)


def _random_unit(item: str, dim: int) -> torch.Tensor:
    seed = int(hashlib.sha256(item.encode()).hexdigest()[:15], 16)
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / v.norm()


def semantic_ids_for_catalogue(tokenizer: PreTrainedTokenizerBase, args: ModelArguments,
                               dataset: str) -> SemanticIds:
    """Codes for every item of ``tokenizer``'s catalogue from ``args.item_text``."""
    if args.semantic_id_levels < 1 or args.semantic_id_codebook_size < 2:
        raise RecipeError(f"semantic_id_levels must be >= 1 and semantic_id_codebook_size >= 2 "
                          f"(got {args.semantic_id_levels}, {args.semantic_id_codebook_size})")
    start = time.time()
    fields = args.text_fields()
    ids, vectors, record = item_text_table(args.item_text or "dataset", dataset=dataset, text_fields=fields,
                                           encoder=args.text_encoder, id_map=args.item_text_id_map)
    row_of = {item: r for r, item in enumerate(ids)}
    items = catalogue(tokenizer)
    dim = vectors.size(1)
    matrix = torch.stack([vectors[row_of[i]].double() if i in row_of else _random_unit(i, dim)
                          for i in items])
    with_text = sum(1 for i in items if i in row_of)
    if with_text == 0:
        raise RecipeError(f"semantic_ids: none of the {len(items)} items has text in {record['source']} "
                          "(wrong table or id map?)")
    clusters = residual_kmeans(matrix, args.semantic_id_levels, args.semantic_id_codebook_size,
                               seed=args.semantic_id_seed)
    sids = SemanticIds.from_clusters(items, clusters, args.semantic_id_codebook_size, info={
        **record, "items_with_text": with_text, "method": "residual k-means",
        "seed": args.semantic_id_seed, "seconds": round(time.time() - start, 1)})
    logger.warning("semantic ids: %d items (%d with text), %d levels of %d + a collision level; "
                   "collision rate %.3f, largest group %d", len(items), with_text, sids.levels,
                   args.semantic_id_codebook_size, sids.info["collision_rate"], sids.info["largest_collision"])
    return sids
