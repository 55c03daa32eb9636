"""The talker: a Qwen3 decoder over summed text-track + codec-track embeddings that predicts codebook 0.

Holds every `talker.*` checkpoint tensor, the code predictor included, under the checkpoint's names
(spec 2, 8.2). The forward pass works on a static KV cache so a decode step can be graph-captured.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import TalkerConfig
from .code_predictor import CodePredictor
from .layers import DecoderStack


class TalkerModel(DecoderStack):
    """`talker.model`: the decoder layers, final norm, codec embedding (3072 ids) and text embedding."""

    def __init__(self, config: TalkerConfig, device=None, dtype=None):
        super().__init__(
            config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
            config.num_key_value_heads, config.attention_head_dim, config.rms_norm_eps, config.rope_theta,
            device, dtype,
        )
        self.codec_embedding = nn.Embedding(config.vocab_size, config.hidden_size, device=device, dtype=dtype)
        self.text_embedding = nn.Embedding(
            config.text_vocab_size, config.text_hidden_size, device=device, dtype=dtype
        )


class TextProjection(nn.Module):
    """`talker.text_projection`: biased SiLU MLP from the text width (2048) to the talker width."""

    def __init__(self, text_hidden_size: int, hidden_size: int, device=None, dtype=None):
        super().__init__()
        self.linear_fc1 = nn.Linear(text_hidden_size, text_hidden_size, bias=True, device=device, dtype=dtype)
        self.linear_fc2 = nn.Linear(text_hidden_size, hidden_size, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.silu(self.linear_fc1(x)))


class Talker(nn.Module):
    """`talker.*`: decoder + text projection + codec head + code predictor, with embedding helpers for
    the two input tracks and the frame feedback. Call `setup_caches` before the first forward."""

    def __init__(self, config: TalkerConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.model = TalkerModel(config, device, dtype)
        self.text_projection = TextProjection(config.text_hidden_size, config.hidden_size, device, dtype)
        self.codec_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device, dtype=dtype)
        self.code_predictor = CodePredictor(config.code_predictor_config, config.hidden_size, device, dtype)

    def setup_caches(self, batch: int, max_len: int, device=None, dtype=None) -> None:
        """Allocate the talker's `[batch, kv_heads, max_len, head_dim]` caches and the predictor's 16-slot ones."""
        self.model.setup_caches(batch, max_len, device, dtype)
        self.code_predictor.setup_caches(batch, device, dtype)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """inputs_embeds [batch, seq, hidden]; RoPE `positions` [batch, seq]; cache `slots` [seq]; bool
        `mask` [batch, 1, seq, max_len]. Returns final-norm hidden states [batch, seq, hidden]."""
        return self.model(inputs_embeds, positions, slots, mask)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text-track vectors T(ids) = text_projection(text_embedding(ids))."""
        return self.text_projection(self.model.text_embedding(ids))

    def embed_codec(self, ids: torch.Tensor) -> torch.Tensor:
        """Codec-track vectors C(ids) from the talker's codec table (codes 0..2047 and control ids)."""
        return self.model.codec_embedding(ids)

    def embed_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """Feedback of frames `codes` [..., 16]: C(code 0) + sum over g of E_g(code g) (spec 2.4).

        Summed in the official order (stack then sum) so float results match it bit for bit."""
        parts = [self.embed_codec(codes[..., 0])]
        parts += [self.code_predictor.embed_code(g, codes[..., g]) for g in range(1, codes.shape[-1])]
        return torch.stack(parts, dim=-2).sum(-2)
