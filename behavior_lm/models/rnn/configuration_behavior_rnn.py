"""Configuration of the GRU/LSTM baselines (GRU4Rec-style next-behavior models)."""
from __future__ import annotations

from transformers import PreTrainedConfig

CELLS = ("gru", "lstm")


class BehaviorRNNConfig(PreTrainedConfig):
    """A recurrent sequence model over behavior tokens.

    Args:
        vocab_size: tokens in the behavior tokenizer (items, behaviors, specials).
        hidden_size: width of the embeddings and of the recurrent state (equal, so the output
            layer can share the item embeddings).
        num_hidden_layers: stacked recurrent layers.
        cell: ``"gru"`` or ``"lstm"``.
        dropout: on the embeddings, between layers and before the heads.
        initializer_range: std of the normal init of embeddings and linear layers.
    """

    model_type = "behavior-rnn"

    def __init__(self, vocab_size: int = 100, hidden_size: int = 64, num_hidden_layers: int = 1,
                 cell: str = "gru", dropout: float = 0.1, initializer_range: float = 0.02,
                 pad_token_id: int | None = 0, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, tie_word_embeddings: bool = True, **kwargs) -> None:
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.cell = cell
        self.dropout = dropout
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)
