"""Item-token embeddings from item text, through a learned projection (any model type).

Item ids carry no meaning; their text (a movie's title and genres) does. With ``item_text`` in a
recipe, the rows of the item tokens in the model's embedding matrix are computed from the items'
text embeddings (``behavior-lm embed-items``: a pretrained encoder, mean-pooled, normalised):

    row(item) = P (t_item - mean_t)                   (item_text_mode: frozen)
    row(item) = P (t_item - mean_t) + e_item          (item_text_mode: trainable; e starts at 0)

``P`` (hidden x text dim) is learned; it starts as the text table's top principal directions,
scaled to the model's ``initializer_range``, so the first forward already places items with
similar text close together. The text vectors themselves never change. Rows of tokens without
text (specials, behaviors, items missing from the item table) stay ordinary trainable rows.

How: a ``torch.nn.utils.parametrize`` parametrization on the input embedding's ``weight`` and,
when the output layer is tied to it (the default), on the output layer's ``weight`` with the same
module, so input and output rows stay one matrix as in SASRec. Only training sees the
parametrization: :func:`bake_item_text` writes the computed rows into a plain matrix before the
run is saved, so the saved model is a stock checkpoint that every loader, the pipeline, the
server and ``push`` read as before. The projection is kept next to the weights
(``item_text.safetensors``) so that items that arrive later (``behavior-lm update``) get their
rows from their text the same way.

Cold items (never seen in training) are the point: an ID-only row of an item that never occurred
is its random initialisation; a text row is where similar items are.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from behavior_lm.errors import RecipeError
from behavior_lm.rundir import atomic_write
from behavior_lm.tokenization.behavior_tokenizer import item_token

ITEM_TEXT_MODES = ("trainable", "frozen")
ITEM_TEXT_FILE = "item_text.safetensors"


class ItemTextProjection(nn.Module):
    """Parametrization: the embedding matrix with the rows ``rows`` computed from text.

    Args:
        text: ``(n, d)`` text embeddings of the items at ``rows`` (centred here, then fixed).
        rows: ``(n,)`` token ids of those items.
        hidden: the model's embedding width.
        mode: ``frozen`` (rows are the projection) or ``trainable`` (projection + the row's own
            trainable vector).
        init_std: target standard deviation of the projected rows at initialisation.
        mean: the centre to subtract (default: the mean of ``text``; given when rebuilding).
        proj: a projection to start from (default: the principal-direction init).
    """

    def __init__(self, text: torch.Tensor, rows: torch.Tensor, hidden: int, mode: str,
                 init_std: float = 0.02, mean: torch.Tensor | None = None,
                 proj: torch.Tensor | None = None) -> None:
        super().__init__()
        if mode not in ITEM_TEXT_MODES:
            raise RecipeError(f"item_text_mode must be one of {', '.join(ITEM_TEXT_MODES)}, got {mode!r}")
        text = text.float()
        mean = text.mean(dim=0) if mean is None else mean.float()
        centred = text - mean
        self.mode = mode
        self.register_buffer("text", centred, persistent=True)
        self.register_buffer("mean", mean, persistent=True)
        self.register_buffer("rows", rows.long(), persistent=True)
        self.proj = nn.Parameter(proj.float().clone() if proj is not None
                                 else principal_init(centred, hidden, init_std))

    def projected(self, text: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, hidden)`` rows for centred ``text`` (default: the table's own)."""
        return (self.text if text is None else text) @ self.proj.T

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rows = self.projected().to(weight.dtype)
        if self.mode == "frozen":
            return weight.index_copy(0, self.rows, rows)
        return weight.index_add(0, self.rows, rows)


def principal_init(centred: torch.Tensor, hidden: int, init_std: float) -> torch.Tensor:
    """``(hidden, d)``: the top principal directions of the centred table (orthonormal rows;
    zero rows past the table's rank), scaled so projected rows have ``init_std`` per entry along
    those directions. A table without spread (one item, identical texts) is refused."""
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(hidden, int((singular > 1e-6 * max(float(singular.max()), 1e-30)).sum()))
    if k == 0 or float(singular.max()) < 1e-6:
        raise RecipeError("item_text: the items' text vectors are (nearly) identical, nothing to project; "
                          "use more items or more telling text fields")
    proj = torch.zeros(hidden, centred.shape[1])
    proj[:k] = vh[:k]
    rms = (centred @ proj[:k].T).pow(2).mean().sqrt()     # over the directions the table has
    return proj * (init_std / rms)


def text_rows(tokenizer: PreTrainedTokenizerBase, ids: list[str], vectors: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token ids, text vectors)`` of the table's items that are in the vocabulary."""
    vocab = tokenizer.get_vocab()
    pairs = [(vocab[item_token(i)], n) for n, i in enumerate(ids) if item_token(i) in vocab]
    if not pairs:
        raise RecipeError("item_text: none of the item table's ids is an item of this dataset "
                          "(do the ids need an id map?)")
    rows, picks = zip(*pairs)
    return torch.tensor(rows, dtype=torch.long), vectors[list(picks)]


def attach_item_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[str],
                     vectors: torch.Tensor, mode: str, init_std: float) -> dict:
    """Parametrize the item rows of ``model``'s embeddings (and of its tied output layer) by text.
    Returns coverage counts for the run's records."""
    rows, text = text_rows(tokenizer, ids, vectors)
    inputs = model.get_input_embeddings()
    outputs = model.get_output_embeddings()
    tied = outputs is not None and outputs.weight is inputs.weight
    projection = ItemTextProjection(text, rows, inputs.weight.shape[1], mode, init_std)
    if mode == "trainable":
        with torch.no_grad():
            inputs.weight[rows] = 0.0              # the row starts as its text; e_item learns the rest
    parametrize.register_parametrization(inputs, "weight", projection, unsafe=True)
    if tied:
        parametrize.register_parametrization(outputs, "weight", projection, unsafe=True)
    elif outputs is not None:                      # untied output layer: its own projection
        if mode == "trainable":
            with torch.no_grad():
                outputs.weight[rows] = 0.0
        parametrize.register_parametrization(
            outputs, "weight", ItemTextProjection(text, rows, outputs.weight.shape[1], mode, init_std),
            unsafe=True)
    n_items = sum(1 for t in tokenizer.get_vocab() if t.startswith(item_token("")))
    return {"mode": mode, "items_with_text": int(rows.numel()), "items": n_items,
            "text_dim": int(vectors.shape[1]), "tied": tied}


def _parametrized(module: nn.Module | None) -> bool:
    return module is not None and parametrize.is_parametrized(module, "weight")


def has_item_text(model: nn.Module) -> bool:
    """True while the model's embeddings are parametrized by item text (training only)."""
    return isinstance(model, PreTrainedModel) and _parametrized(model.get_input_embeddings())


def item_text_projection(model: PreTrainedModel) -> ItemTextProjection | None:
    if not has_item_text(model):
        return None
    return model.get_input_embeddings().parametrizations["weight"][0]


def bake_item_text(model: PreTrainedModel) -> ItemTextProjection | None:
    """Replace the parametrization by the matrix it computes (a stock model again), re-tying
    the output layer to it; returns the projection (for ``item_text.safetensors``)."""
    projection = item_text_projection(model)
    if projection is None:
        return None
    inputs = model.get_input_embeddings()
    outputs = model.get_output_embeddings()
    tied = _parametrized(outputs) and outputs.parametrizations["weight"][0] is projection
    parametrize.remove_parametrizations(inputs, "weight", leave_parametrized=True)
    if tied:
        parametrize.remove_parametrizations(outputs, "weight", leave_parametrized=False)
        outputs.weight = inputs.weight
    elif _parametrized(outputs):
        parametrize.remove_parametrizations(outputs, "weight", leave_parametrized=True)
    return projection


def untied_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict without shared storage (safetensors refuses it): the parametrized input and
    output layers share their original matrix and projection while training."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_item_text(folder: str | Path, projection: ItemTextProjection, settings: dict) -> Path:
    """``item_text.safetensors``: the learned projection and the text centre, with the settings."""
    payload = save({"proj": projection.proj.detach().float().contiguous(),
                    "mean": projection.mean.detach().float().contiguous()},
                   metadata={"settings": json.dumps(settings)})
    return atomic_write(Path(folder) / ITEM_TEXT_FILE, payload)


def load_item_text(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict] | None:
    """``(proj, mean, settings)`` of a run trained with item text, else None."""
    path = Path(folder) / ITEM_TEXT_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as fh:
        return fh.get_tensor("proj"), fh.get_tensor("mean"), json.loads(fh.metadata()["settings"])


def rows_from_text(proj: torch.Tensor, mean: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Embedding rows for new items' text vectors, as training computed its items' rows."""
    return (text.float() - mean.float()) @ proj.float().T
