"""Model fusion: several trained runs (any model types) and the floors as one model.

An ensemble is a :class:`BehaviorEnsembleModel` (a ``PreTrainedModel`` registered with the Auto
classes, ``model_type: behavior-ensemble``) that holds its members and the fusion weights. It is
scored by the same harness as any model, saved as one directory (``members/<name>/`` hold the
members' own weights, ``floors.safetensors`` the floors' counts) and loaded by
``pipeline("next-behavior", model=DIR)``, ``behavior-lm predict`` and ``behavior-lm serve``.

Every member first gives a *distribution*: ``log P_m(item | history)`` normalised over the item
tokens (a model's next-item probabilities, the mixture over behaviors on multi-behavior streams;
a floor's scores normalised). Methods (``FUSION_METHODS``):

- ``mean``: ``P(item) = 1/M sum_m P_m(item)``, probability averaging;
- ``weighted``: ``sum_m w_m P_m(item)`` with ``w`` on the simplex, fitted on the *validation* split by
  maximum likelihood of its targets (:func:`fit_weights`: EM for mixture weights, a concave problem
  with one optimum; the test split is never looked at);
- ``rrf``: reciprocal-rank fusion, ``sum_m w_m / (k + rank_m(item))`` with ``k = 60``; scale-free,
  so members whose probabilities are not calibrated against each other can still be combined;
- ``vote`` (classification tasks): each member's most likely class is one (weighted) vote; ties go
  to the class with the higher mean probability.

For classification tasks ``mean`` is the soft vote and ``weighted`` fits the weights the same
way; for the regression task (``next-rating``) ``mean`` averages the predicted ratings.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          PreTrainedConfig, PreTrainedModel)
from transformers.modeling_outputs import SequenceClassifierOutput

from behavior_lm.tasks import get_task
from behavior_lm.evaluation.floors import Floor, floor_from_buffers
from behavior_lm.evaluation.scoring import item_log_softmax, next_item_scores

FUSION_METHODS = ("mean", "weighted", "rrf", "vote")
RANKING_METHODS = ("mean", "weighted", "rrf")
CLASSIFICATION_METHODS = ("mean", "weighted", "vote")
REGRESSION_METHODS = ("mean",)
RRF_K = 60
FLOORS_FILE = "floors.safetensors"


class BehaviorEnsembleConfig(PreTrainedConfig):
    """``members``: one dict per member in fusion order, ``{"name", "kind": "model" | "floor",
    "model_type" | "floor", "source"}``; ``weights``: one per member (they sum to one)."""

    model_type = "behavior-ensemble"

    def __init__(self, method: str = "mean", members: list[dict] | None = None,
                 weights: list[float] | None = None, rrf_k: int = RRF_K, task: str = "next-item",
                 **kwargs: Any) -> None:
        self.method = method
        self.members = list(members or [])
        self.weights = list(weights) if weights is not None else None
        self.rrf_k = rrf_k
        self.task = task
        super().__init__(**kwargs)


def fuse(log_probs: torch.Tensor, weights: torch.Tensor, method: str, rrf_k: int = RRF_K) -> torch.Tensor:
    """Combine ``(members, batch, n)`` member log-probabilities into ``(batch, n)`` scores.

    ``mean`` / ``weighted``: ``log sum_m w_m P_m`` (a log-probability); ``rrf``: the fused
    reciprocal-rank score (higher is better); ``vote``: ``1 + mean probability`` for the classes with
    the most (weighted) votes, ``mean probability - 1`` for the rest, so the vote decides and the
    mean probability breaks ties, whatever the weights."""
    w = weights.to(log_probs.device, torch.float32).view(-1, *([1] * (log_probs.dim() - 1)))
    if method in ("mean", "weighted"):
        return torch.logsumexp(log_probs.float() + w.log(), dim=0)
    if method == "rrf":
        order = log_probs.argsort(dim=-1, descending=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(1, order.size(-1) + 1, device=order.device).expand_as(order))
        return (w / (rrf_k + ranks.float())).sum(dim=0)
    if method == "vote":
        n = log_probs.size(-1)
        votes = nn.functional.one_hot(log_probs.argmax(dim=-1), n).float()          # (M, B, C)
        share = (w * votes).sum(dim=0)
        mean_p = (w * log_probs.float().exp()).sum(dim=0)
        # lexicographic: the vote share decides; the mean probability only among the classes that
        # share the top vote (any weights); the others stay below them by at least 1
        top = share >= share.max(dim=-1, keepdim=True).values - 1e-9
        return torch.where(top, 1.0 + mean_p, mean_p - 1.0)
    raise ValueError(f"unknown fusion method {method!r}; known: {', '.join(FUSION_METHODS)}")


def fit_weights(target_log_probs: np.ndarray, iterations: int = 2000, tol: float = 1e-9) -> np.ndarray:
    """Mixture weights on the simplex that maximise ``sum_n log sum_m w_m P_m(target_n)``.

    ``target_log_probs``: ``(examples, members)``, each member's log-probability of each
    example's true target (on validation). EM for mixture weights: each step moves ``w`` to the
    members' mean responsibility for the targets; the log-likelihood never decreases and, being
    concave in ``w``, has no local optimum but the global one. Examples no member gives any
    probability are left out."""
    lp = np.asarray(target_log_probs, dtype=np.float64)
    lp = lp[np.isfinite(lp).any(axis=1)]
    m = lp.shape[1]
    if lp.shape[0] == 0:
        return np.full(m, 1.0 / m)
    w = np.full(m, 1.0 / m)
    for _ in range(iterations):
        with np.errstate(divide="ignore"):
            joint = lp + np.log(w)
        top = joint.max(axis=1, keepdims=True)
        resp = np.exp(joint - top)
        resp /= resp.sum(axis=1, keepdims=True)
        new = resp.mean(axis=0)
        if np.abs(new - w).max() < tol:
            return new
        w = new
    return w


def log_likelihood(target_log_probs: np.ndarray, weights: np.ndarray) -> float:
    """Mean ``log sum_m w_m P_m(target)`` (what :func:`fit_weights` maximises)."""
    lp = np.asarray(target_log_probs, dtype=np.float64)
    lp = lp[np.isfinite(lp).any(axis=1)]
    with np.errstate(divide="ignore"):
        joint = lp + np.log(np.asarray(weights, dtype=np.float64))
    top = joint.max(axis=1, keepdims=True)
    return float(np.mean(top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))))


def floor_log_probs(floor: Floor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    width: int) -> torch.Tensor:
    """A floor's ``log P(item)`` on ``width`` columns (a model's vocabulary may be padded beyond
    the tokenizer's), computed where the floor's buffers live and returned on the ids' device."""
    dev = floor.candidates.device
    lp = floor.log_probs(input_ids.to(dev), attention_mask.to(dev)).to(input_ids.device)
    if lp.size(1) < width:
        lp = nn.functional.pad(lp, (0, width - lp.size(1)), value=float("-inf"))
    return lp[:, :width]


class BehaviorEnsembleModel(PreTrainedModel):
    """Trained runs and floors fused into one model (see the module docstring)."""

    config_class = BehaviorEnsembleConfig
    base_model_prefix = "ensemble"
    main_input_name = "input_ids"

    def __init__(self, config: BehaviorEnsembleConfig, models: list[PreTrainedModel] | None = None,
                 floors: list[Floor] | None = None) -> None:
        super().__init__(config)
        self.models = nn.ModuleList(models or [])
        self.floors = nn.ModuleList(floors or [])
        kinds = [m["kind"] for m in config.members]
        if kinds.count("model") != len(self.models) or kinds.count("floor") != len(self.floors):
            raise ValueError(f"ensemble config lists {kinds.count('model')} models and {kinds.count('floor')} "
                             f"floors; got {len(self.models)} and {len(self.floors)}")
        if not self.models:
            raise ValueError("an ensemble needs at least one trained model")
        self._order: list[tuple[str, int]] = []
        counters = {"model": 0, "floor": 0}
        for kind in kinds:
            self._order.append((kind, counters[kind]))
            counters[kind] += 1

    def _init_weights(self, module: nn.Module) -> None:     # members arrive trained
        return

    # ------------------------------------------------------------------ views
    @property
    def weights(self) -> torch.Tensor:
        n = len(self.config.members)
        return torch.tensor(self.config.weights or [1.0 / n] * n, dtype=torch.float32)

    @property
    def member_names(self) -> list[str]:
        return [m["name"] for m in self.config.members]

    def members(self) -> list[nn.Module]:
        """Models and floors in fusion order."""
        return [self.models[i] if kind == "model" else self.floors[i] for kind, i in self._order]

    def get_output_embeddings(self) -> nn.Module:
        return self.models[0].get_output_embeddings()

    def get_input_embeddings(self) -> nn.Module:
        return self.models[0].get_input_embeddings()

    # ------------------------------------------------------------------ next-item scores
    @torch.no_grad()
    def member_log_probs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         candidates: torch.Tensor, behavior_ids: torch.Tensor | None = None,
                         given: torch.Tensor | None = None) -> torch.Tensor:
        """``(members, batch, vocab)``: each member's ``log P(next item)`` over the item tokens
        (given each row's next behavior when ``given`` holds one behavior token id per row)."""
        width = candidates.numel()
        out = []
        for member in self.members():
            if isinstance(member, Floor):
                lp = floor_log_probs(member, input_ids, attention_mask, width)
            else:
                lp = item_log_softmax(next_item_scores(member, input_ids, attention_mask, candidates,
                                                       behavior_ids, given), candidates)
            out.append(lp[:, :width])
        return torch.stack(out)

    @torch.no_grad()
    def fused_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, candidates: torch.Tensor,
                     behavior_ids: torch.Tensor | None = None, given: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, vocab)`` fused next-item scores (``-inf`` off the item tokens)."""
        fused = fuse(self.member_log_probs(input_ids, attention_mask, candidates, behavior_ids, given),
                     self.weights, self.config.method, self.config.rrf_k)
        return fused.masked_fill(~candidates.to(fused.device), float("-inf"))

    # ------------------------------------------------------------------ classification / regression
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: Any) -> SequenceClassifierOutput:
        """Classification / regression ensembles: the fused output as ``logits`` (log of the
        fused class probabilities, the vote score, or the mean predicted value)."""
        task = get_task(self.config.task)
        if task.ranking:
            raise TypeError("a next-item ensemble is scored with fused_scores (or the pipeline), not forward")
        outs = [m(input_ids=input_ids, attention_mask=attention_mask).logits for m in self.models]
        stacked = torch.stack(outs).float()
        if task.regression:
            return SequenceClassifierOutput(logits=(self.weights.view(-1, 1, 1).to(stacked.device) * stacked).sum(dim=0))
        return SequenceClassifierOutput(logits=fuse(stacked.log_softmax(dim=-1), self.weights, self.config.method))

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:
        """``config.json`` + ``members/<name>/`` (each member's own ``save_pretrained``, safetensors)
        + ``floors.safetensors``."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(out)
        tensors: dict[str, torch.Tensor] = {}
        for spec, member in zip(self.config.members, self.members()):
            if isinstance(member, Floor):
                tensors.update({f"{spec['name']}.{k}": v.contiguous().cpu()
                                for k, v in member.state_dict().items()})
            else:
                member.save_pretrained(out / "members" / spec["name"])
        if tensors:
            save_file(tensors, str(out / FLOORS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *_: Any,
                        config: BehaviorEnsembleConfig | None = None, **kwargs: Any) -> "BehaviorEnsembleModel":
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():                         # a Hub id: the whole folder, members included
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(pretrained_model_name_or_path), token=kwargs.get("token")))
        config = config if isinstance(config, BehaviorEnsembleConfig) else BehaviorEnsembleConfig.from_pretrained(path)
        floors_file = path / FLOORS_FILE
        saved = load_file(str(floors_file)) if floors_file.is_file() else {}
        models, floors = [], []
        for spec in config.members:
            if spec["kind"] == "floor":
                prefix = spec["name"] + "."
                floors.append(floor_from_buffers(spec["floor"], {k[len(prefix):]: v for k, v in saved.items()
                                                                 if k.startswith(prefix)}))
            else:
                models.append(load_member(path / "members" / spec["name"], config.task))
        model = cls(config, models, floors)
        model.config._name_or_path = str(pretrained_model_name_or_path)
        return model.eval()


def load_member(path: Path, task: str) -> PreTrainedModel:
    """A trained run's model with the Auto class its architecture needs."""
    member_config = AutoConfig.from_pretrained(path)
    archs = getattr(member_config, "architectures", None) or []
    kind = get_task(task)
    if kind.token_level:
        auto = AutoModelForTokenClassification
    elif not kind.ranking:
        auto = AutoModelForSequenceClassification
    elif any(a.endswith("ForMaskedLM") for a in archs):
        auto = AutoModelForMaskedLM
    else:
        auto = AutoModelForCausalLM
    return auto.from_pretrained(path, config=member_config).eval()


def describe(config: BehaviorEnsembleConfig) -> str:
    """``weighted: gpt2 0.41, markov 0.59`` (for tables and cards)."""
    weights = config.weights or [1.0 / len(config.members)] * len(config.members)
    return f"{config.method}: " + ", ".join(f"{m['name']} {w:.2f}" for m, w in zip(config.members, weights))


AutoConfig.register(BehaviorEnsembleConfig.model_type, BehaviorEnsembleConfig, exist_ok=True)
AutoModel.register(BehaviorEnsembleConfig, BehaviorEnsembleModel, exist_ok=True)
