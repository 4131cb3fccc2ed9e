"""A pretrained language model as the next-item recommender (``model_type: pretrained``, task
``next-item``), fine-tuned in full or with ``peft`` LoRA.

The history is text (``watched: Toy Story (1995). Animation, ...; Heat (1995). ...``) read by the
pretrained encoder (MiniLM offline, or any local path / Hub id of an ``AutoModel`` checkpoint).
The output layer is the catalogue's own text: every item's embedding by the same encoder before
fine-tuning (mean-pooled, normalised: the ``item_text`` table), frozen. A history's mean-pooled
state goes through a learned square projection (identity at the start, so the untrained model
already ranks items by text similarity to the history), is normalised, and scores each item by
``scale * cos(query, item) + bias[item]``; the loss is the full-catalogue softmax cross-entropy, the
objective of the id models. With ``lora_r > 0`` the encoder is frozen and only the LoRA adapters
and this head train.

What a run saves: a full fine-tune is one ``TextRankerModel`` checkpoint (registered with
``AutoModel``); a LoRA run saves the adapter (``adapter_config.json`` naming the base encoder,
``adapter_model.safetensors`` with the LoRA weights and the head), the item table
(``ranker_items.safetensors``: the frozen output layer and the catalogue order) and
``item_texts.json`` (the texts the pipeline writes histories from); :func:`load_text_ranker`
rebuilds the base from the encoder and the table and applies the adapter.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

ITEMS_FILE = "ranker_items.safetensors"
TEXTS_FILE = "item_texts.json"


class TextRankerConfig(PreTrainedConfig):
    """``encoder``: the pretrained encoder's config as a dict; ``base_model``: where its weights
    come from (a path or Hub id); ``num_items`` / ``item_dim``: the frozen output layer."""

    model_type = "behavior_text_ranker"

    def __init__(self, encoder: dict | None = None, base_model: str | None = None, num_items: int = 0,
                 item_dim: int = 0, **kwargs) -> None:
        self.encoder = encoder or {}
        self.base_model = base_model
        self.num_items = num_items
        self.item_dim = item_dim
        super().__init__(**kwargs)


class RankHead(nn.Module):
    """Query projection (identity at the start), a learned scale and one bias per item."""

    def __init__(self, hidden: int, item_dim: int, num_items: int) -> None:
        super().__init__()
        self.project = nn.Linear(hidden, item_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.item_bias = nn.Parameter(torch.zeros(num_items))

    def reset(self) -> None:
        with torch.no_grad():
            self.project.weight.zero_()
            n = min(self.project.weight.shape)
            self.project.weight[:n, :n] = torch.eye(n)
            self.project.bias.zero_()
            self.log_scale.fill_(math.log(20.0))
            self.item_bias.zero_()

    def forward(self, pooled: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        query = F.normalize(self.project(pooled), dim=-1)
        return self.log_scale.exp() * query @ items.T + self.item_bias


class TextRankerModel(PreTrainedModel):
    """Encoder + :class:`RankHead` over a frozen table of item text embeddings (module docstring)."""

    config_class = TextRankerConfig
    base_model_prefix = "encoder"
    _no_split_modules: list[str] = []

    def __init__(self, config: TextRankerConfig) -> None:
        super().__init__(config)
        encoder_config = AutoConfig.for_model(**config.encoder)
        self.encoder = AutoModel.from_config(encoder_config)
        self.head = RankHead(encoder_config.hidden_size, config.item_dim, config.num_items)
        self.register_buffer("item_embeddings", torch.zeros(config.num_items, config.item_dim))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, RankHead):
            module.reset()
        elif module is not self and hasattr(self.encoder, "_init_weights") and not isinstance(module, TextRankerModel):
            self.encoder._init_weights(module)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.head(self.pooled(input_ids, attention_mask), self.item_embeddings)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_encoder(cls, base: str, item_embeddings: torch.Tensor, base_model: str | None = None) -> "TextRankerModel":
        """A ranker whose encoder holds the pretrained weights of ``base`` (a resolved path or Hub
        id) and whose output layer is ``item_embeddings``; the head starts at identity."""
        encoder = AutoModel.from_pretrained(base)
        config = TextRankerConfig(encoder=encoder.config.to_dict(), base_model=base_model or base,
                                  num_items=item_embeddings.size(0), item_dim=item_embeddings.size(1))
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        with torch.no_grad():
            model.item_embeddings.copy_(item_embeddings)
        model.head.reset()
        return model


def register() -> None:
    """``AutoConfig`` / ``AutoModel`` know the ranker (no ``trust_remote_code``)."""
    try:
        AutoConfig.register(TextRankerConfig.model_type, TextRankerConfig)
        AutoModel.register(TextRankerConfig, TextRankerModel)
    except ValueError:           # already registered
        pass


register()


def is_text_ranker(model) -> bool:
    base = getattr(model, "get_base_model", None)
    return isinstance(base() if callable(base) else model, TextRankerModel)


def with_lora(model: TextRankerModel, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """The encoder frozen, LoRA adapters on ``target_modules``, the head trained and saved with them."""
    from behavior_lm.errors import RecipeError

    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RecipeError("lora_r > 0 needs peft (pip install 'behavior-lm[text]')") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        modules_to_save=["head"])
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise RecipeError(f"lora_target_modules {target_modules}: {exc}") from None


def save_ranker_files(folder: str | Path, model, catalogue: list[str], texts: dict[str, str]) -> None:
    """The frozen output layer with the catalogue order, and the item texts (see the module docstring)."""
    folder = Path(folder)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    save_file({"item_embeddings": base.item_embeddings.detach().cpu().contiguous()}, str(folder / ITEMS_FILE),
              metadata={"items": json.dumps(catalogue)})
    (folder / TEXTS_FILE).write_text(json.dumps({i: texts[i] for i in catalogue if i in texts}))


def ranker_catalogue(folder: str | Path) -> tuple[list[str], torch.Tensor]:
    path = _local_or_hub(folder, ITEMS_FILE)
    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata()["items"]), fh.get_tensor("item_embeddings")


def ranker_texts(folder: str | Path) -> dict[str, str]:
    return json.loads(_local_or_hub(folder, TEXTS_FILE).read_text())


def _local_or_hub(folder: str | Path, name: str) -> Path:
    path = Path(folder) / name
    if path.is_file():
        return path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(str(folder), name))


def load_text_ranker(run: str | Path, base: str | None = None):
    """A finished text-ranker run: the adapter over its rebuilt base, or the full checkpoint.
    ``base``: where the encoder's weights are (default: the run's ``base_model``; the packaged
    MiniLM resolves offline)."""
    from behavior_lm.models.pretrained import ADAPTER_CONFIG
    from behavior_lm.models.text_encoder import resolve_encoder

    try:
        _local_or_hub(run, ADAPTER_CONFIG)
    except Exception:  # noqa: BLE001 - no adapter here or on the Hub: a full checkpoint
        return AutoModel.from_pretrained(run).eval()
    from peft import PeftModel

    config = AutoConfig.from_pretrained(run)
    _, table = ranker_catalogue(run)
    model = TextRankerModel.from_encoder(resolve_encoder(base or config.base_model), table,
                                         base_model=config.base_model)
    model.config.behavior_lm = getattr(config, "behavior_lm", {})     # what inference reads
    model.config._name_or_path = model.name_or_path = str(run)        # where the run's files are
    return PeftModel.from_pretrained(model, str(run)).eval()
