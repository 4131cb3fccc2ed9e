"""GRU/LSTM next-behavior models as ``PreTrainedModel`` subclasses.

They save, load, push, train with ``Trainer`` and are scored by the harness exactly like the stock
transformers: a base model (``BehaviorRNNModel``) that returns hidden states, and one class per
head. Self-contained: only torch, transformers and the sibling config.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (BaseModelOutput, CausalLMOutput,
                                           SequenceClassifierOutput)

from .configuration_behavior_rnn import BehaviorRNNConfig


class BehaviorRNNPreTrainedModel(PreTrainedModel):
    config_class = BehaviorRNNConfig
    config: BehaviorRNNConfig
    base_model_prefix = "rnn"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        """Normal embeddings/linears; recurrent weights as the RNN literature does.

        ``PreTrainedModel._init_weights`` knows ``nn.LSTM`` but not ``nn.GRU``: both get
        Xavier-uniform input weights, orthogonal recurrent weights and zero biases, and the LSTM
        forget-gate bias starts at 1 so early gradients flow through time.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.GRU, nn.LSTM)):
            for name, param in module.named_parameters():
                if name.startswith("weight_ih"):
                    init.xavier_uniform_(param)
                elif name.startswith("weight_hh"):
                    init.orthogonal_(param)
                elif name.startswith("bias"):
                    init.zeros_(param)
                    if isinstance(module, nn.LSTM) and name.startswith("bias_ih"):
                        # gates are (input, forget, cell, output); one of the two biases suffices
                        h = module.hidden_size
                        init.ones_(param[h:2 * h])
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)


class BehaviorRNNModel(BehaviorRNNPreTrainedModel):
    """Embeddings -> dropout -> GRU/LSTM. Returns the hidden state of every position."""

    def __init__(self, config: BehaviorRNNConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        rnn_cls = nn.GRU if config.cell == "gru" else nn.LSTM
        self.encoder = rnn_cls(config.hidden_size, config.hidden_size, config.num_hidden_layers,
                               batch_first=True,
                               dropout=config.dropout if config.num_hidden_layers > 1 else 0.0)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> BaseModelOutput:
        """Hidden states of every position; the recurrence runs over the real tokens only.

        Pad tokens never enter the recurrence, whatever side they are on: a left-padded row
        (the usual layout for HF decoders) gets the same states at its real tokens as the row
        without padding. Pad positions get zeros. Right-padded batches (our collator's) take a
        shortcut: a state at position t only depends on tokens <= t, so trailing pads cannot
        change the states at real tokens and the plain recurrence is exact there.
        """
        hidden = self.dropout(self.embeddings(input_ids))                # (B, L, H)
        if attention_mask is None:
            return BaseModelOutput(last_hidden_state=self.encoder(hidden)[0])
        mask = attention_mask.bool()
        lengths = mask.sum(dim=1)                                         # (B,)
        positions = torch.arange(mask.size(1), device=mask.device)
        if torch.equal(mask, positions.unsqueeze(0) < lengths.unsqueeze(1)):   # right-padded
            return BaseModelOutput(last_hidden_state=self.encoder(hidden)[0])
        # real tokens first, in their order (a stable sort of the pad flags), then pack them
        order = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)   # (B, L)
        index = order.unsqueeze(-1).expand_as(hidden)
        packed = nn.utils.rnn.pack_padded_sequence(hidden.gather(1, index), lengths.clamp(min=1).cpu(),
                                                   batch_first=True, enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.encoder(packed)[0], batch_first=True,
                                                  total_length=mask.size(1))    # (B, L, H)
        out = out * (positions.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1).to(out.dtype)
        return BaseModelOutput(last_hidden_state=torch.zeros_like(out).scatter(1, index, out))


class BehaviorRNNForCausalLM(BehaviorRNNPreTrainedModel, GenerationMixin):
    """Next-token (next item / next behavior) head, tied to the item embeddings by default."""

    _tied_weights_keys = {"lm_head.weight": "rnn.embeddings.weight"}

    def __init__(self, config: BehaviorRNNConfig) -> None:
        super().__init__(config)
        self.rnn = BehaviorRNNModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, logits_to_keep: int = 0,
                output_hidden_states: bool | None = None, **kwargs) -> CausalLMOutput:
        """As the stock ``*ForCausalLM``: ``logits_to_keep`` computes logits for the last positions
        only; ``output_hidden_states`` returns the final hidden states (what the output layer reads
        before its dropout) as ``hidden_states[-1]``, the contract the sampled softmax relies on."""
        full = self.rnn(input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = full[:, -logits_to_keep:] if logits_to_keep else full
        logits = self.lm_head(self.dropout(hidden))                       # (B, L, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=(full,) if output_hidden_states else None)


class BehaviorRNNForSequenceClassification(BehaviorRNNPreTrainedModel):
    """Classification / regression from the state at each sequence's last real token."""

    def __init__(self, config: BehaviorRNNConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.rnn = BehaviorRNNModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        hidden = self.rnn(input_ids, attention_mask=attention_mask).last_hidden_state
        if attention_mask is None:
            last = torch.full((input_ids.size(0),), input_ids.size(1) - 1, device=input_ids.device)
        else:   # the last real token, on either padding side
            positions = torch.arange(input_ids.size(1), device=input_ids.device)
            last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)
        pooled = hidden[torch.arange(input_ids.size(0), device=input_ids.device), last]  # (B, H)
        logits = self.score(self.dropout(pooled))                         # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return SequenceClassifierOutput(loss=loss, logits=logits)
