"""The code predictor (MTP): a 5-layer Qwen3 decoder that fills codebooks 1..15 of one frame.

Per frame it sees at most 16 positions: [talker hidden, embedding(code 0)], then embedding(code j) for
j = 1..14, each projected to its own width; head j predicts codebook j + 1 (spec 3).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import CodePredictorConfig
from .layers import DecoderStack


class CodePredictorModel(DecoderStack):
    """`code_predictor.model`: layers, norm and the 15 embedding tables of codebooks 1..15 (talker width)."""

    def __init__(self, config: CodePredictorConfig, talker_hidden_size: int, device=None, dtype=None):
        super().__init__(
            config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
            config.num_key_value_heads, config.head_dim, config.rms_norm_eps, config.rope_theta, device, dtype,
        )
        self.codec_embedding = nn.ModuleList(
            nn.Embedding(config.vocab_size, talker_hidden_size, device=device, dtype=dtype)
            for _ in range(config.num_code_groups - 1)
        )


class CodePredictor(nn.Module):
    """`talker.code_predictor`: model + 15 lm heads + the talker-to-predictor projection (1.7B only)."""

    def __init__(self, config: CodePredictorConfig, talker_hidden_size: int, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.model = CodePredictorModel(config, talker_hidden_size, device, dtype)
        self.lm_head = nn.ModuleList(
            nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device, dtype=dtype)
            for _ in range(config.num_code_groups - 1)
        )
        # The checkpoint holds this projection only when the widths differ (1.7B); 0.6B has none.
        if config.hidden_size != talker_hidden_size:
            self.small_to_mtp_projection = nn.Linear(
                talker_hidden_size, config.hidden_size, bias=True, device=device, dtype=dtype
            )
        else:
            self.small_to_mtp_projection = nn.Identity()

    @property
    def num_positions(self) -> int:
        """Positions one frame uses: talker hidden + codes 0..14 (code 15 is never fed back)."""
        return self.config.num_code_groups

    def setup_caches(self, batch: int, device=None, dtype=None) -> None:
        """One 16-slot cache per layer, reused by every frame (each frame overwrites slots from 0)."""
        self.model.setup_caches(batch, self.num_positions, device, dtype)

    def forward(self, inputs_embeds: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Run `inputs_embeds` [batch, seq, talker hidden] at frame positions `slots` [seq] (RoPE position
        == cache slot) and return final-norm hidden states [batch, seq, predictor hidden]. Slots after the
        last one written are masked out by causality, so stale entries of an earlier frame are never read."""
        x = self.small_to_mtp_projection(inputs_embeds)
        batch = x.shape[0]
        causal = torch.arange(self.num_positions, device=slots.device)[None, :] <= slots[:, None]
        mask = causal[None, None].expand(batch, 1, -1, -1)
        return self.model(x, slots[None, :].expand(batch, -1), slots, mask)

    def embed_code(self, group: int, codes: torch.Tensor) -> torch.Tensor:
        """Talker-width embedding of codebook `group` (1..15) codes."""
        return self.model.codec_embedding[group - 1](codes)
