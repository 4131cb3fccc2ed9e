"""``behavior-lm predict``: the pipeline's answer for one history, as a Markdown table."""
from __future__ import annotations

from pathlib import Path

from behavior_lm.errors import RecipeError
from behavior_lm.tokenization.behavior_tokenizer import is_behavior_token, is_item_token


def cli_history(text: str) -> str | list:
    """``"50 172"`` -> ids; ``"4021:pv 4021:cart"`` -> ``(item, behavior)`` pairs; a serialized
    stream (``"<pv> i:4021"``) is passed through unchanged."""
    tokens = text.replace(",", " ").split()
    if any(is_item_token(t) or is_behavior_token(t) for t in tokens):
        return text
    if tokens and all(":" in t for t in tokens):
        return [tuple(t.rsplit(":", 1)) for t in tokens]
    return tokens


def predict_table(model: str, history: str, *, top_k: int = 10, behavior: str | None = None,
                  exclude_seen: bool | None = None, return_behaviors: bool = False) -> str:
    from transformers import pipeline

    from behavior_lm.inference.pipelines import register
    from behavior_lm.models import rnn  # noqa: F401  (registers GRU/LSTM with the Auto classes)

    register()

    if not Path(model).exists() and Path(model).is_absolute():
        raise RecipeError(f"{model}: no such run directory")
    if Path(model).is_dir() and not (Path(model) / "config.json").is_file():
        raise RecipeError(f"{model}: not a model directory (no config.json)")
    pipe = pipeline("next-behavior", model=model)
    try:
        out = pipe(cli_history(history), top_k=top_k, behavior=behavior, exclude_seen=exclude_seen,
                   return_behaviors=return_behaviors)
    except ValueError as exc:  # a behavior the model does not know, etc.: a user error
        raise RecipeError(str(exc)) from exc
    items = out["items"] if return_behaviors else out
    lines = []
    if items and "note" in items[0]:
        lines += [f"note: {items[0]['note']}", ""]
    lines += ["| rank | item | probability | behavior |", "|---:|---|---:|---|"]
    lines += [f"| {r} | {row['item']} | {row['score']:.4f} | {row['behavior'] or ''} |"
              for r, row in enumerate(items, 1)]
    if return_behaviors:
        lines += ["", "| next behavior | probability |", "|---|---:|"]
        lines += [f"| {row['behavior']} | {row['score']:.4f} |" for row in out["behaviors"]]
    return "\n".join(lines)
