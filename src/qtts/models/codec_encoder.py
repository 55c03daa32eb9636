"""Speech-tokenizer encoder: 24 kHz audio -> 16 codes per 80 ms frame (spec section 7.1).

A Mimi encoder (transformers naming, so `encoder.*` checkpoint keys load as they are): SEANet convolutions
down to 25 Hz, a causal transformer, a strided conv down to 12.5 Hz, then a split residual vector quantizer
of which only the first 16 levels are run (the semantic level and 15 acoustic ones).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import CodecEncoderConfig
from ..errors import CheckpointError, InputError
from .layers import LayerScale, apply_rope, rope_cos_sin, rope_inverse_frequencies

# Codebook vectors are running sums divided by usage counts clamped to this floor.
CLUSTER_USAGE_FLOOR = 1e-5


class EncoderConv1d(nn.Module):
    """`<name>.conv`: causal conv; strided ones right-pad the input to a whole number of strides.

    Padding is zeros, except for the 25 -> 12.5 Hz downsample, which repeats the edge samples.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, bias: bool = True, pad_mode: str = "constant", device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation,
                              bias=bias, device=device, dtype=dtype)
        self.stride = stride
        self.left_padding = (kernel_size - 1) * dilation + 1 - stride
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right_padding = -x.shape[-1] % self.stride
        return self.conv(F.pad(x, (self.left_padding, right_padding), mode=self.pad_mode))


class ResnetBlock(nn.Module):
    """`encoder.layers.N` (residual): ELU -> conv k3 (C -> C/compress) -> ELU -> conv k1 (-> C), plus the input."""

    def __init__(self, config: CodecEncoderConfig, dim: int, dilation: int, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        hidden = dim // config.compress
        # Indices 0 and 2 are the parameter-free ELUs; 1 and 3 match the checkpoint's `block.1` and `block.3`.
        self.block = nn.ModuleList([
            nn.ELU(),
            EncoderConv1d(dim, hidden, config.residual_kernel_size, dilation=dilation, **factory),
            nn.ELU(),
            EncoderConv1d(hidden, dim, 1, **factory),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.block:
            h = layer(h)
        return x + h


class SEANetEncoder(nn.Module):
    """`encoder`: conv, then per stride (4, 5, 6, 8) residual blocks + ELU + strided conv doubling channels."""

    def __init__(self, config: CodecEncoderConfig, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        channels = config.num_filters
        layers: list[nn.Module] = [EncoderConv1d(config.audio_channels, channels, config.kernel_size, **factory)]
        for ratio in reversed(config.upsampling_ratios):
            layers += [ResnetBlock(config, channels, config.dilation_growth_rate**j, **factory)
                       for j in range(config.num_residual_layers)]
            layers += [nn.ELU(), EncoderConv1d(channels, 2 * channels, 2 * ratio, stride=ratio, **factory)]
            channels *= 2
        layers += [nn.ELU(), EncoderConv1d(channels, config.hidden_size, config.last_kernel_size, **factory)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class EncoderAttention(nn.Module):
    def __init__(self, config: CodecEncoderConfig, device=None, dtype=None):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.attention_head_dim
        factory = dict(bias=config.attention_bias, device=device, dtype=dtype)
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, **factory)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, **factory)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, **factory)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, **factory)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = x.shape
        q = self.q_proj(x).view(batch, frames, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, frames, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, frames, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        # Plain causal attention: the config's sliding_window (250) is not applied by the transformers
        # 4.57 Mimi the official package runs, and matching its codes is what counts here.
        out = F.scaled_dot_product_attention(q, k, v, is_causal=frames > 1, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(batch, frames, -1))


class EncoderMLP(nn.Module):
    def __init__(self, config: CodecEncoderConfig, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False, device=device, dtype=dtype)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderTransformerLayer(nn.Module):
    def __init__(self, config: CodecEncoderConfig, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        dim, scale = config.hidden_size, config.layer_scale_initial_scale
        self.input_layernorm = nn.LayerNorm(dim, eps=config.norm_eps, **factory)
        self.self_attn = EncoderAttention(config, **factory)
        self.self_attn_layer_scale = LayerScale(dim, scale, **factory)
        self.post_attention_layernorm = nn.LayerNorm(dim, eps=config.norm_eps, **factory)
        self.mlp = EncoderMLP(config, **factory)
        self.mlp_layer_scale = LayerScale(dim, scale, **factory)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class EncoderTransformer(nn.Module):
    """`encoder_transformer`: causal pre-norm layers with RoPE over positions 0..T-1 at 25 Hz."""

    def __init__(self, config: CodecEncoderConfig, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(EncoderTransformerLayer(config, device=device, dtype=dtype)
                                    for _ in range(config.num_hidden_layers))
        self.register_buffer("inv_freq", rope_inverse_frequencies(config.attention_head_dim, config.rope_theta,
                                                                  device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, frames, hidden] -> same shape."""
        positions = torch.arange(x.shape[1], device=x.device)[None]
        cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


class Codebook(nn.Module):
    """`codebook`: EMA leftovers (`embed_sum`, `cluster_usage`, `initialized`), held as buffers like Mimi."""

    def __init__(self, size: int, dim: int, device=None, dtype=None):
        super().__init__()
        self.register_buffer("initialized", torch.ones(1, device=device, dtype=dtype))
        self.register_buffer("cluster_usage", torch.ones(size, device=device, dtype=dtype))
        self.register_buffer("embed_sum", torch.zeros(size, dim, device=device, dtype=dtype))

    def vectors(self) -> torch.Tensor:
        return self.embed_sum / self.cluster_usage.clamp(min=CLUSTER_USAGE_FLOOR)[:, None]


class ResidualQuantizer(nn.Module):
    """`quantizer.{semantic,acoustic}_residual_vector_quantizer`: project 1x1, then nearest-vector RVQ."""

    def __init__(self, config: CodecEncoderConfig, levels: int, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.input_proj = self.output_proj = None
        if config.vector_quantization_hidden_dimension != config.hidden_size:
            dim = config.vector_quantization_hidden_dimension
            self.input_proj = nn.Conv1d(config.hidden_size, dim, 1, bias=False, **factory)
            # output_proj serves decoding only; kept because the checkpoint holds it.
            self.output_proj = nn.Conv1d(dim, config.hidden_size, 1, bias=False, **factory)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"codebook": Codebook(config.codebook_size, config.codebook_dim, **factory)})
            for _ in range(levels))

    def forward(self, x: torch.Tensor, levels: int) -> torch.Tensor:
        """x [batch, hidden, frames] -> codes [batch, frames, levels] of the first `levels` codebooks."""
        if self.input_proj is not None:
            x = self.input_proj(x)
        residual = x.transpose(1, 2)
        shape = residual.shape[:-1]
        residual = residual.reshape(-1, residual.shape[-1])
        codes = []
        for layer in self.layers[:levels]:
            vectors = layer["codebook"].vectors()
            # torch.cdist, as Mimi uses, so near-ties resolve to the same code as in the official encoder.
            index = torch.cdist(residual[None].float(), vectors[None].float())[0].argmin(dim=-1)
            residual = residual - F.embedding(index, vectors)
            codes.append(index.view(shape))
        return torch.stack(codes, dim=-1)


class SplitQuantizer(nn.Module):
    """`quantizer`: the semantic RVQ (level 0) and the acoustic RVQ (levels 1..) each quantize the same input."""

    def __init__(self, config: CodecEncoderConfig, device=None, dtype=None):
        super().__init__()
        self.semantic_levels = config.num_semantic_quantizers
        self.semantic_residual_vector_quantizer = ResidualQuantizer(config, self.semantic_levels,
                                                                    device=device, dtype=dtype)
        self.acoustic_residual_vector_quantizer = ResidualQuantizer(
            config, config.num_quantizers - self.semantic_levels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, levels: int) -> torch.Tensor:
        """x [batch, hidden, frames] -> codes [batch, frames, levels]."""
        semantic = self.semantic_residual_vector_quantizer(x, self.semantic_levels)
        acoustic = self.acoustic_residual_vector_quantizer(x, levels - self.semantic_levels)
        return torch.cat((semantic, acoustic), dim=-1)


class CodecEncoder(nn.Module):
    """The speech tokenizer's `encoder.*`: waveform [batch, samples] at 24 kHz -> codes [batch, frames, 16]."""

    def __init__(self, config: CodecEncoderConfig, valid_num_quantizers: int = 16, device=None, dtype=None):
        super().__init__()
        if not config.num_semantic_quantizers < valid_num_quantizers <= config.num_quantizers:
            raise CheckpointError(f"encoder_valid_num_quantizers {valid_num_quantizers} must lie in "
                                  f"({config.num_semantic_quantizers}, {config.num_quantizers}]")
        if config.hidden_act != "gelu" or not config.use_causal_conv or config.pad_mode != "constant":
            raise CheckpointError("encoder_config: only the Mimi variant with gelu, causal convs and constant "
                                  f"padding is supported (got {config.hidden_act!r}, use_causal_conv="
                                  f"{config.use_causal_conv}, pad_mode {config.pad_mode!r})")
        if config.use_conv_shortcut:
            raise CheckpointError("encoder_config: use_conv_shortcut=true is not supported")
        factory = dict(device=device, dtype=dtype)
        self.config = config
        self.valid_num_quantizers = valid_num_quantizers
        self.encoder = SEANetEncoder(config, **factory)
        self.encoder_transformer = EncoderTransformer(config, **factory)
        hop = math.prod(config.upsampling_ratios)
        conv_rate = math.ceil(config.sampling_rate / hop)
        # Without an explicit frame_rate, MimiConfig derives it from this one stride-2 conv.
        frame_rate = config.frame_rate if config.frame_rate is not None else config.sampling_rate / (2 * hop)
        self.downsample = EncoderConv1d(config.hidden_size, config.hidden_size, 2 * int(conv_rate / frame_rate),
                                        stride=2, bias=False, pad_mode="replicate", **factory)
        self.quantizer = SplitQuantizer(config, **factory)
        self.samples_per_frame = 2 * hop

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform [batch, samples] -> codes [batch, ceil(samples / 1920), valid_num_quantizers] (int64)."""
        h = self.encoder(waveform[:, None])
        h = self.encoder_transformer(h.transpose(1, 2)).transpose(1, 2)
        return self.quantizer(self.downsample(h), self.valid_num_quantizers)


@torch.no_grad()
def encode(encoder: CodecEncoder, waveform: torch.Tensor, lengths: list[int] | None = None):
    """Encode 24 kHz audio as the official `Qwen3TTSTokenizerV2Model.encode` does.

    waveform [samples] -> codes [frames, 16]; or [batch, samples], right-padded with zeros, with the valid
    sample count of each item in `lengths` (default: all samples) -> a list of [frames_i, 16].
    Each item keeps ceil(valid_samples / 1920) frames.
    """
    single = waveform.dim() == 1
    batch = waveform[None] if single else waveform
    if batch.dim() != 2 or batch.shape[-1] == 0:
        raise InputError(f"encode expects a waveform [samples] or [batch, samples], got shape {tuple(waveform.shape)}")
    if lengths is None:
        lengths = [batch.shape[-1]] * batch.shape[0]
    if len(lengths) != batch.shape[0] or not all(0 <= n <= batch.shape[-1] for n in lengths):
        raise InputError(f"lengths {lengths} do not fit a batch of {batch.shape[0]} x {batch.shape[-1]} samples")
    codes = encoder(batch.to(next(encoder.parameters()).dtype))
    trimmed = [item[: -(-n // encoder.samples_per_frame)] for item, n in zip(codes, lengths)]
    return trimmed[0] if single else trimmed
