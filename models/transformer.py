"""A BERT-like encoder (transformers' BertModel, random init) returning only ``last_hidden_state``.

Factory for the PyTorch frontend: ``edgec.models.transformer:bert_like`` (inputs ``input_ids`` and
``attention_mask``, int64 ``[1, 128]``).
"""

from __future__ import annotations

import torch
from torch import nn

from edgec.models._blocks import seeded

SEQ_LEN = 128
VOCAB_SIZE = 30522


class LastHiddenState(nn.Module):
    """Wraps a Hugging Face encoder so the graph has one tensor output, ``last_hidden_state``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden state."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_like(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    """6 layers, hidden 384, 12 heads, FFN 1536, GELU, vocab 30522, random init under ``seed``.

    Weights get BERT's own N(0, 0.02) init. Biases and LayerNorm gains/shifts, which that init leaves at
    exactly 0 and 1, get N(0, 0.02) jitter: a trained model has no such constants, and identical zero
    tensors would be merged into one shared initializer by the exporter's optimizer.
    ``attn_implementation`` is passed to transformers ("sdpa", the default, or "eager").
    """
    from transformers import BertConfig, BertModel  # slow import, only when asked

    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, max_position_embeddings=512, attn_implementation=attn_implementation,
    )
    with seeded(seed):
        encoder = BertModel(config, add_pooling_layer=False)
        with torch.no_grad():
            for param in encoder.parameters():
                if param.ndim == 1:  # biases and LayerNorm weight/bias
                    param.add_(torch.randn_like(param), alpha=0.02)
    return LastHiddenState(encoder).eval()
