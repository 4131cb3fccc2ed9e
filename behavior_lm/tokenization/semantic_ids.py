"""Semantic item ids: each item becomes a short code of tokens (TIGER-style generative retrieval).

An item id carries no meaning; a code derived from the item's text does. Residual k-means over
the items' text embeddings gives each item ``levels`` cluster indices: level 1 clusters the
embeddings, level 2 clusters what level 1 left unexplained (the residuals), and so on, so items
that share a prefix are similar and the model can generalise across them. Items whose ``levels``
indices all coincide (a *collision*) are told apart by one more level, a running index within
the group (0 for the first item, in catalogue order: most popular first). The code of an item is
therefore ``levels + 1`` tokens, written ``#1:12 #2:200 #3:7 #4:0`` (``code_format`` of
``grammar.json``).

The code tokens replace the item tokens in the stream: a model reads and generates codes, its
vocabulary is ``specials + levels x codebook_size + collision indices`` whatever the size of the
catalogue, and decoding maps a generated code back to its raw item id through the table saved
next to the model (``semantic_ids.json``). Residual k-means (RQ-KMeans) is used instead of
TIGER's RQ-VAE: no training loop, deterministic for a seed, and the same hierarchical codes.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from behavior_lm.tokenization.behavior_tokenizer import grammar, is_item_token, item_id_of

CODES_FILE = "semantic_ids.json"


def code_token(level: int, value: int) -> str:
    """``(1, 12)`` -> ``"#1:12"``: value ``value`` at level ``level`` (1-based)."""
    return grammar()["code_format"].format(level, value)


def _kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int) -> torch.Tensor:
    """``(k, dim)`` centroids of ``x`` by Lloyd's algorithm from a k-means++ start; an empty
    cluster is re-seeded with the point farthest from its centroid."""
    n = x.size(0)
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    nearest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:                        # fewer distinct points than clusters
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            pick = int(torch.multinomial(nearest / total, 1, generator=generator))
        centroids.append(x[pick])
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    c = torch.stack(centroids)
    for _ in range(iters):
        dist = torch.cdist(x, c)
        assign = dist.argmin(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        sizes = torch.bincount(assign, minlength=k)
        empty = sizes == 0
        new = new / sizes.clamp(min=1).unsqueeze(1).to(x.dtype)
        if empty.any():
            far = dist.gather(1, assign.unsqueeze(1)).squeeze(1).argsort(descending=True)
            new[empty] = x[far[: int(empty.sum())]]
        if torch.allclose(new, c):
            c = new
            break
        c = new
    return c


def residual_kmeans(vectors: torch.Tensor, levels: int, codebook_size: int, *, seed: int = 0,
                    iters: int = 50) -> torch.Tensor:
    """``(items, levels)`` cluster indices: k-means on the vectors, then on what each level's
    centroid leaves unexplained. ``codebook_size`` is capped at the number of items."""
    if vectors.ndim != 2 or vectors.size(0) == 0:
        raise ValueError("residual_kmeans needs a non-empty (items, dim) matrix")
    if levels < 1 or codebook_size < 2:
        raise ValueError(f"semantic ids need levels >= 1 and codebook_size >= 2, got {levels}, {codebook_size}")
    generator = torch.Generator().manual_seed(seed)
    residual = vectors.double().clone()
    k = min(codebook_size, residual.size(0))
    codes = []
    for _ in range(levels):
        centroids = _kmeans(residual, k, generator, iters)
        assign = torch.cdist(residual, centroids).argmin(1)
        codes.append(assign)
        residual = residual - centroids[assign]
    return torch.stack(codes, dim=1)


@dataclass
class SemanticIds:
    """The item <-> code table of a semantic-id model.

    ``items[j]`` is the raw id of item ``j`` (catalogue order, most popular first) and ``codes[j]``
    its ``levels + 1`` values (the last one separates collisions). ``info`` records how the codes
    were made (text source, encoder, seed) and the collision statistics.
    """

    items: list[str]
    codes: list[tuple[int, ...]]
    levels: int
    codebook_size: int
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codes = [tuple(int(v) for v in c) for c in self.codes]
        if len(self.items) != len(self.codes):
            raise ValueError("semantic ids: one code per item")
        self.index = {item: j for j, item in enumerate(self.items)}
        self.by_code = {c: j for j, c in enumerate(self.codes)}
        if len(self.by_code) != len(self.codes):
            raise ValueError("semantic ids: two items share a code (the collision level must separate them)")

    @classmethod
    def from_clusters(cls, items: Sequence[str], clusters: torch.Tensor, codebook_size: int,
                      info: dict | None = None) -> "SemanticIds":
        """Codes from ``(items, levels)`` cluster indices: a collision index is appended, counting
        the items that share all cluster indices in catalogue order."""
        seen: Counter = Counter()
        codes = []
        for row in clusters.tolist():
            key = tuple(row)
            codes.append((*key, seen[key]))
            seen[key] += 1
        shared = sum(n for n in seen.values() if n > 1)
        stats = {"items": len(items), "distinct_prefixes": len(seen),
                 "collision_rate": shared / max(len(items), 1),     # items whose prefix is not unique
                 "largest_collision": max(seen.values(), default=0)}
        return cls(list(items), codes, clusters.size(1), codebook_size, {**(info or {}), **stats})

    @property
    def code_length(self) -> int:
        """Tokens per item: ``levels`` cluster indices and the collision index."""
        return self.levels + 1

    def tokens_of(self, item: str) -> list[str]:
        return [code_token(level + 1, v) for level, v in enumerate(self.codes[self.index[item]])]

    def vocabulary(self) -> list[str]:
        """Every code token that occurs, level by level, values ascending."""
        used = [sorted({c[level] for c in self.codes}) for level in range(self.code_length)]
        return [code_token(level + 1, v) for level, values in enumerate(used) for v in values]

    def expand(self, tokens: Sequence[str]) -> list[str]:
        """A token stream with each item token (``i:42``) replaced by its code tokens; other
        tokens pass unchanged. Training rows, scored rows and ``pipeline()`` requests all go
        through this one function."""
        out: list[str] = []
        for tok in tokens:
            if is_item_token(tok):
                out.extend(self.tokens_of(item_id_of(tok)))
            else:
                out.append(tok)
        return out

    def positions(self, max_length: int) -> int:
        """Positions a model needs for rows of ``max_length`` one-token events (``[BOS]`` first)."""
        return 1 + (max_length - 1) * self.code_length

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"levels": self.levels, "codebook_size": self.codebook_size, "info": self.info,
                "items": self.items, "codes": [list(c) for c in self.codes]}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CODES_FILE
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, folder_or_repo: str | Path) -> "SemanticIds":
        """The table saved with a run (a local folder, else a Hub repository id)."""
        path = Path(folder_or_repo) / CODES_FILE
        if not path.is_file():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(str(folder_or_repo), CODES_FILE))
        data = json.loads(path.read_text())
        return cls(data["items"], [tuple(c) for c in data["codes"]], data["levels"], data["codebook_size"],
                   data.get("info", {}))


class CodeTrie:
    """The prefix tree of the items' codes in token ids, for constrained decoding: after a
    prefix of generated code tokens only the children that lead to a real item are allowed, so
    every finished code is an item of the catalogue. ``exclude`` (a user's seen items) removes a
    child once every item below it is excluded."""

    def __init__(self, sids: SemanticIds, token_to_id: dict[str, int]) -> None:
        self.sids = sids
        self.paths = [tuple(token_to_id[t] for t in sids.tokens_of(item)) for item in sids.items]
        self.children: dict[tuple[int, ...], list[int]] = defaultdict(list)
        self.count: Counter = Counter()
        for path in self.paths:
            for depth in range(len(path)):
                prefix = path[:depth]
                if self.count[path[:depth + 1]] == 0:
                    self.children[prefix].append(path[depth])
                self.count[path[:depth + 1]] += 1
        self.item_of = {path: j for j, path in enumerate(self.paths)}
        self.depth = sids.code_length

    def excluded_counts(self, items: Sequence[int]) -> Counter:
        """How many of ``items`` (item indices) lie below each prefix."""
        out: Counter = Counter()
        for j in set(int(i) for i in items if 0 <= int(i) < len(self.paths)):
            path = self.paths[j]
            for depth in range(1, len(path) + 1):
                out[path[:depth]] += 1
        return out

    def allowed(self, prefix: tuple[int, ...], excluded: Counter | None = None) -> list[int]:
        children = self.children.get(prefix, [])
        if not excluded:
            return children
        kept = [c for c in children if excluded.get(prefix + (c,), 0) < self.count[prefix + (c,)]]
        return kept or children       # everything excluded (a user who saw the whole catalogue)
