"""Speech-tokenizer decoder: 16 codes per 80 ms frame -> 1920 samples of 24 kHz audio (spec section 7.2).

Every layer is causal. A stateful layer's `forward(x, state=None)` zero-pads its left context, as the
official one-pass decode does, when `state` is None; given a stream state (a dict from layer to its
buffers, built by `qtts.models.codec_stream.CodecStream`) it reads its left context from there and writes
the new one back in place, so a chunked decode equals a one-pass decode. The one-pass and streaming
decodes are the same modules running the same code.

Where the Triton kernels run compiled (a GPU), the convolutions take a fused path (`fused`): the same
function in fewer passes over the samples (`activated_conv`, `unbiased_conv`), on activations kept
time-major ([B, T, C] in memory), as cuDNN's convolutions read and write them; so do the codebooks (one
lookup for all) and the transformer (norms with their residual adds, the SwiGLU gate, RoPE), in fewer
launches. The plain path stays the reference, and a test runs the fused one against it
through Triton's interpreter.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .. import kernels
from ..config import CodecDecoderConfig
from ..errors import CheckpointError, InputError
from ..kernels import snake
from ..kernels.codebook import codebook_sum_reference, codebook_sum_triton
from ..kernels.rms_norm import add_rms_norm_triton
from ..kernels.rope import rope_triton
from ..kernels.swiglu import silu_mul_triton
from .layers import LayerScale, RMSNorm, SwiGLU, apply_rope, rope_cos_sin, rope_inverse_frequencies

# The official codebooks divide by usage counts clamped to this floor (unused codes have usage ~0).
CLUSTER_USAGE_FLOOR = 1e-5
# The activation's plain PyTorch form, bit-equal to the official SnakeBeta (tested); the fused kernel's
# reference. `SnakeBeta` dispatches to the Triton kernel on CUDA and to this everywhere else.
snake_beta = snake.snake_beta_reference


class SnakeBeta(nn.Module):
    """x + sin(e^alpha * x)^2 / (e^beta + 1e-9) per channel; `alpha`, `beta` [channels] in log scale."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake.snake_beta(x, self.alpha, self.beta)


class CausalConv1d(nn.Module):
    """`<name>.conv`: a stride-1 convolution over the present and the (k - 1) * dilation past samples."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 groups: int = 1, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups,
                              device=device, dtype=dtype)
        self.context = (kernel_size - 1) * dilation

    def new_stream_state(self, batch: int, device, dtype) -> torch.Tensor | None:
        """The last `context` input samples of the previous chunk (zeros before the first one)."""
        if self.context == 0:
            return None
        return torch.zeros(batch, self.conv.in_channels, self.context, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        if fused(x):
            padded, valid = left_padded(self, x, state, lambda out: out.copy_(x))
            return unbiased_conv(self.conv, padded, valid).add_(self.conv.bias[:, None])
        if self.context == 0:
            return self.conv(x)
        if state is None:
            return self.conv(F.pad(x, (self.context, 0)))
        tail = state[self]
        x = torch.cat((tail, x), dim=-1)
        tail.copy_(x[..., -self.context:])
        return self.conv(x)


def fused(x: torch.Tensor) -> bool:
    """Whether the decoder takes its fused path on x's device: where the Triton kernels run compiled."""
    return kernels.enabled(x.device)


def time_major(batch: int, channels: int, length: int, like: torch.Tensor) -> torch.Tensor:
    """An empty [batch, channels, length] tensor laid out [batch, length, channels]: the fused decoder's
    activations, which cuDNN's bf16 convolutions read and write as they lie (channels-last). In [B, C, T]
    they made cuDNN convert every input, weight and output (27 % of a one-frame decode's kernel time, a
    fifth of a 64 x 16 one: BENCHMARKS.md 2026-12-07)."""
    return like.new_empty(batch, length, channels).transpose(1, 2)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 4-D t with channels-last strides, those of its size-1 dimensions included (PyTorch picks a
    convolution's layout from them): a view of t where it lies so already, else a copy."""
    if not t.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    _, channels, height, width = t.shape
    return t.as_strided(t.shape, (height * width * channels, 1, width * channels, channels))


def unbiased_conv(conv: nn.Conv1d, padded: torch.Tensor, valid: int) -> torch.Tensor:
    """`conv` without its bias over the first `valid` samples of `padded` (left context included; any
    samples after them, fewer than the dilation, feed only outputs that are dropped), as a 2-D convolution
    of channels-last views: a time-major `padded` and a weight laid out by `channels_last_convolutions` are
    read in place, and the output is time-major.

    A dilated convolution runs over the [length / dilation, dilation] grid of its samples (t = q * dilation
    + r) with a [taps, 1] kernel: the same sums without dilation (cuDNN has fast kernels for every
    undilated shape here but not for every dilated one: at 384 channels, dilation 9 ran in its generic
    kernel, 20 % of a 64 x 16 bulk decode call on an H100, 2026-12-06). Time-major, the grid is a view."""
    dilation, taps = conv.dilation[0], conv.kernel_size[0]
    length = padded.shape[-1]
    if length % dilation:
        raise InputError(f"a dilated convolution needs a multiple of {dilation} samples, got {length}")
    grid = padded.unflatten(2, (length // dilation, dilation))
    out = F.conv2d(_channels_last(grid), _channels_last(conv.weight.unsqueeze(3)), groups=conv.groups)
    return out.flatten(2)[..., : valid - (taps - 1) * dilation]


def left_padded(conv: CausalConv1d, x: torch.Tensor, state: dict | None, write) -> tuple[torch.Tensor, int]:
    """A time-major buffer for `conv`'s input: its left context (the stream's tail, or zeros), then what
    `write(view)` puts in the view behind it (x's `length` samples, transformed or not: no `torch.cat`),
    then zeros up to a multiple of the dilation. Takes the new tail into the stream state. Returns the
    buffer and its valid length."""
    batch, channels, length = x.shape
    context, dilation = conv.context, conv.conv.dilation[0]
    valid = context + length
    padded = time_major(batch, channels, -(-valid // dilation) * dilation, x)
    # The samples after `valid` feed only outputs that are dropped, but they are zeroed all the same: an
    # FFT or Winograd algorithm, were cuDNN to pick one, mixes every input sample.
    padded[..., valid:].zero_()
    if state is None:
        padded[..., :context].zero_()
    else:
        padded[..., :context].copy_(state[conv])
    write(padded[..., context:valid])
    if state is not None:
        state[conv].copy_(padded[..., length:valid])
    return padded, valid


def activated_conv(conv: CausalConv1d, activation: SnakeBeta, x: torch.Tensor, state: dict | None,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """The fused path's `conv(activation(x + bias))`, without conv's own bias (the caller adds it, or its
    next kernel does): the activation writes straight into the conv's padded input (`left_padded`)."""
    write = functools.partial(snake.snake_beta_triton, x, activation.alpha, activation.beta, bias)
    return unbiased_conv(conv.conv, *left_padded(conv, x, state, lambda out: write(out=out)))


class CausalTransposedConv1d(nn.Module):
    """`<name>.conv`: upsampling by `stride`; output sample t depends only on input frames <= t // stride.

    The official layer drops the last kernel - stride output samples. Streaming, those samples are the
    partial sums of the chunk's last frame, carried over and completed by the next chunk's first frame.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 device=None, dtype=None):
        super().__init__()
        if not stride <= kernel_size <= 2 * stride:
            raise CheckpointError(f"transposed conv kernel {kernel_size} must lie in [stride, 2 * stride] "
                                  f"(stride {stride}) to carry its overlap between chunks")
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride,
                                       device=device, dtype=dtype)
        self.overlap = kernel_size - stride

    def new_stream_state(self, batch: int, device, dtype) -> torch.Tensor | None:
        """Bias-free partial output of the previous chunk's last frame, beyond that chunk's end."""
        if self.overlap == 0:
            return None
        return torch.zeros(batch, self.conv.out_channels, self.overlap, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        if fused(x):  # time-major in and out, as `unbiased_conv`
            y = F.conv_transpose2d(_channels_last(x.unsqueeze(2)), _channels_last(self.conv.weight.unsqueeze(2)),
                                   stride=(1, self.conv.stride[0])).squeeze(2)
            if state is None or self.overlap == 0:
                return y[..., : y.shape[-1] - self.overlap] + self.conv.bias[:, None]
        elif state is None or self.overlap == 0:
            y = self.conv(x)
            return y[..., : y.shape[-1] - self.overlap]
        else:  # without bias, so the carried partial sums can be added before the bias is (once)
            y = F.conv_transpose1d(x, self.conv.weight, stride=self.conv.stride)
        carried = state[self]
        y[..., : self.overlap] += carried
        carried.copy_(y[..., -self.overlap:])
        return y[..., : -self.overlap] + self.conv.bias[:, None]


class ConvNeXtBlock(nn.Module):
    """`upsample.N.1`: depthwise causal conv k7 -> LayerNorm -> 4x MLP (exact GELU) -> x gamma -> residual."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.dwconv = CausalConv1d(dim, dim, 7, groups=dim, **factory)
        self.norm = nn.LayerNorm(dim, eps=1e-6, **factory)
        self.pwconv1 = nn.Linear(dim, 4 * dim, **factory)
        self.pwconv2 = nn.Linear(4 * dim, dim, **factory)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6, **factory))

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        h = self.dwconv(x, state).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class KeyValueWindow(NamedTuple):
    """Un-rotated keys and values of the last `sliding_window - 1` frames, oldest first."""

    keys: torch.Tensor  # [batch, kv_heads, window - 1, head_dim]
    values: torch.Tensor


class DecoderAttention(nn.Module):
    """`self_attn`: multi-head attention with RoPE, no QK-norm, over a causal sliding window."""

    def __init__(self, config: CodecDecoderConfig, device=None, dtype=None):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.attention_head_dim
        self.history = config.sliding_window - 1
        factory = dict(bias=config.attention_bias, device=device, dtype=dtype)
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, **factory)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, **factory)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, **factory)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, **factory)

    def new_stream_state(self, batch: int, device, dtype) -> KeyValueWindow:
        shape = (batch, self.kv_heads, self.history, self.head_dim)
        return KeyValueWindow(torch.zeros(shape, device=device, dtype=dtype),
                              torch.zeros(shape, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                state: dict | None = None) -> torch.Tensor:
        """x [batch, frames, hidden]; cos/sin [1, keys, head_dim]; mask [frames, keys] or
        [batch, 1, frames, keys], True where a query may attend."""
        batch, frames, _ = x.shape
        q = self.q_proj(x).view(batch, frames, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, frames, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, frames, self.kv_heads, self.head_dim).transpose(1, 2)
        if state is not None:
            window = state[self]
            k = torch.cat((window.keys, k), dim=2)
            v = torch.cat((window.values, v), dim=2)
            window.keys.copy_(k[:, :, -self.history:])
            window.values.copy_(v[:, :, -self.history:])
        # Keys are rotated here, not when cached: only relative positions matter, and keeping the
        # rotation positions small keeps long streams as accurate as short ones.
        if fused(x):
            q, k = rope_triton(q, cos[0, -frames:], sin[0, -frames:]), rope_triton(k, cos[0], sin[0])
        else:
            q, k = apply_rope(q, cos[:, -frames:], sin[:, -frames:]), apply_rope(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        return self.o_proj(out.transpose(1, 2).reshape(batch, frames, -1))


class DecoderTransformerLayer(nn.Module):
    def __init__(self, config: CodecDecoderConfig, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        dim, scale = config.hidden_size, config.layer_scale_initial_scale
        self.input_layernorm = RMSNorm(dim, config.rms_norm_eps, **factory)
        self.self_attn = DecoderAttention(config, **factory)
        self.self_attn_layer_scale = LayerScale(dim, scale, **factory)
        self.post_attention_layernorm = RMSNorm(dim, config.rms_norm_eps, **factory)
        self.mlp = SwiGLU(dim, config.intermediate_size, **factory)
        self.mlp_layer_scale = LayerScale(dim, scale, **factory)

    def forward(self, x, cos, sin, mask, state: dict | None = None) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, mask, state))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class DecoderTransformer(nn.Module):
    """`pre_transformer`: latent -> hidden, sliding-window causal layers (query t sees t-71..t), -> latent.

    One-pass, the frames take RoPE positions 0..T-1 like the official decode of one chunk. Streaming, the
    window's cached frames take positions 0..70 and the new frames follow them.
    """

    def __init__(self, config: CodecDecoderConfig, device=None, dtype=None):
        super().__init__()
        if config.hidden_act != "silu":
            raise CheckpointError(f"decoder_config hidden_act is {config.hidden_act!r}; only 'silu' is supported")
        factory = dict(device=device, dtype=dtype)
        self.window = config.sliding_window
        self.input_proj = nn.Linear(config.latent_dim, config.hidden_size, **factory)
        self.layers = nn.ModuleList(DecoderTransformerLayer(config, **factory)
                                    for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **factory)
        self.output_proj = nn.Linear(config.hidden_size, config.latent_dim, **factory)
        self.register_buffer("inv_freq", rope_inverse_frequencies(config.attention_head_dim, config.rope_theta,
                                                                  device=device), persistent=False)

    def new_stream_state(self, batch: int, device, dtype) -> torch.Tensor:
        """[batch, window - 1]: which cached window slots hold a real earlier frame of each stream."""
        return torch.zeros(batch, self.window - 1, dtype=torch.bool, device=device)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """x [batch, frames, latent_dim] -> [batch, frames, latent_dim]."""
        frames = x.shape[1]
        history = 0 if state is None else self.window - 1
        positions = torch.arange(history + frames, device=x.device)
        query_positions = positions[history:, None]
        mask = (positions[None, :] <= query_positions) & (positions[None, :] > query_positions - self.window)
        if state is not None:
            filled = state[self]
            slots = torch.cat((filled, filled.new_ones(filled.shape[0], frames)), dim=1)
            mask = (mask & slots[:, None, :])[:, None]  # [batch, 1 (heads), frames, keys]
            filled.copy_(slots[:, -filled.shape[1]:])
        h = self.input_proj(x)
        cos, sin = rope_cos_sin(positions[None], self.inv_freq, h.dtype)
        if fused(h):
            return self.output_proj(self._fused_layers(h, cos, sin, mask, state))
        for layer in self.layers:
            h = layer(h, cos, sin, mask, state)
        return self.output_proj(self.norm(h))

    def _fused_layers(self, h, cos, sin, mask, state) -> torch.Tensor:
        """The layers and the final norm, each residual add with its LayerScale and the norm after it in one
        kernel, the SwiGLU gate in one, where the eager forms launch one kernel an op. A streamed first chunk
        is one frame, whose decode costs launches, not arithmetic. Returns the final norm's output."""
        first = self.layers[0].input_layernorm
        normed = add_rms_norm_triton(h, first.weight, first.eps)[0]
        after = [layer.input_layernorm for layer in self.layers[1:]] + [self.norm]
        for layer, next_norm in zip(self.layers, after):
            update = layer.self_attn(normed, cos, sin, mask, state)
            norm = layer.post_attention_layernorm
            normed, h = add_rms_norm_triton(update, norm.weight, norm.eps, h, layer.self_attn_layer_scale.scale)
            mlp = layer.mlp
            update = mlp.down_proj(silu_mul_triton(mlp.gate_proj(normed), mlp.up_proj(normed)))
            normed, h = add_rms_norm_triton(update, next_norm.weight, next_norm.eps, h, layer.mlp_layer_scale.scale)
        return normed


class Codebook(nn.Module):
    """`_codebook`: code vectors stored as running sums and usage counts, left over from EMA training."""

    def __init__(self, size: int, dim: int, device=None, dtype=None):
        super().__init__()
        self.cluster_usage = nn.Parameter(torch.ones(size, device=device, dtype=dtype))
        self.embedding_sum = nn.Parameter(torch.zeros(size, dim, device=device, dtype=dtype))


class CodebookGroup(nn.Module):
    """`quantizer.rvq_first` / `quantizer.rvq_rest`: sum of codebook vectors, projected 1x1 to codebook_dim.

    The codebooks' parameters are views of one table per kind (`sums` [codebooks, size, dim], `usage`
    [codebooks, size]), which loading fills in place, so the fused path looks all codebooks up in one
    launch (`kernels/codebook.py`; the plain path is its reference)."""

    def __init__(self, codebooks: int, size: int, dim: int, io_dim: int, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        # input_proj only serves training-time encoding; it is kept because the checkpoint holds it.
        self.input_proj = nn.Conv1d(io_dim, dim, 1, bias=False, **factory)
        self.output_proj = nn.Conv1d(dim, io_dim, 1, bias=False, **factory)
        # Nested containers reproduce the checkpoint names `vq.layers.N._codebook.*`.
        self.vq = nn.ModuleDict({"layers": nn.ModuleList(
            nn.ModuleDict({"_codebook": Codebook(size, dim, **factory)}) for _ in range(codebooks))})
        # plain attributes, not buffers: not in the state dict, and not moved by `.to()` (see `_tables`)
        self.sums = torch.stack([book.embedding_sum.detach() for book in self._books()])
        self.usage = torch.stack([book.cluster_usage.detach() for book in self._books()])
        for index, book in enumerate(self._books()):
            book.embedding_sum = nn.Parameter(self.sums[index], requires_grad=book.embedding_sum.requires_grad)
            book.cluster_usage = nn.Parameter(self.usage[index], requires_grad=book.cluster_usage.requires_grad)

    def _books(self) -> list[Codebook]:
        return [layer["_codebook"] for layer in self.vq["layers"]]

    def _tables(self) -> bool:
        """Whether every codebook's parameters are still views of `sums` and `usage`."""
        return all(book.embedding_sum.data_ptr() == self.sums[index].data_ptr()
                   and book.cluster_usage.data_ptr() == self.usage[index].data_ptr()
                   for index, book in enumerate(self._books()))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [batch, frames, codebooks] -> [batch, io_dim, frames]."""
        sums, usage = self.sums, self.usage
        if not self._tables():  # the module was moved with `.to()`: its codebooks' own parameters, stacked
            sums = torch.stack([book.embedding_sum for book in self._books()])
            usage = torch.stack([book.cluster_usage for book in self._books()])
        add_up = codebook_sum_triton if fused(codes) else codebook_sum_reference
        return self.output_proj(add_up(codes, sums, usage, CLUSTER_USAGE_FLOOR).transpose(1, 2))


class CodeDequantizer(nn.Module):
    """`quantizer`: code 0 (semantic) and codes 1..15 (acoustic) dequantized separately, then added."""

    def __init__(self, config: CodecDecoderConfig, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        dim = config.codebook_dim // 2
        self.rvq_first = CodebookGroup(1, config.codebook_size, dim, config.codebook_dim, **factory)
        self.rvq_rest = CodebookGroup(config.num_quantizers - 1, config.codebook_size, dim, config.codebook_dim,
                                      **factory)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [batch, frames, num_quantizers] -> [batch, codebook_dim, frames]."""
        return self.rvq_first(codes[..., :1]) + self.rvq_rest(codes[..., 1:])


class ResidualUnit(nn.Module):
    """SnakeBeta -> dilated causal conv k7 -> SnakeBeta -> conv k1, plus the input."""

    def __init__(self, dim: int, dilation: int, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.act1 = SnakeBeta(dim, **factory)
        self.conv1 = CausalConv1d(dim, dim, 7, dilation=dilation, **factory)
        self.act2 = SnakeBeta(dim, **factory)
        self.conv2 = CausalConv1d(dim, dim, 1, **factory)

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        if not fused(x):
            return x + self.conv2(self.act2(self.conv1(self.act1(x), state)))
        # Each conv's bias goes into the kernel behind it; the 1x1 conv is one matrix product over every
        # sample of the batch (time-major, [B, T, C] lies contiguous).
        update = activated_conv(self.conv1, self.act1, x, state)
        hidden = snake.snake_beta_triton(update, self.act2.alpha, self.act2.beta, self.conv1.conv.bias)
        update = F.linear(hidden.transpose(1, 2), self.conv2.conv.weight[..., 0]).transpose(1, 2)
        return snake.residual_add_triton(x, update, self.conv2.conv.bias)


class DecoderBlock(nn.Module):
    """`decoder.N` (N = 1..4): SnakeBeta, transposed conv upsampling by `rate`, residual units (dilation 1, 3, 9)."""

    def __init__(self, in_dim: int, out_dim: int, rate: int, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.block = nn.ModuleList([
            SnakeBeta(in_dim, **factory),
            CausalTransposedConv1d(in_dim, out_dim, 2 * rate, rate, **factory),
            *(ResidualUnit(out_dim, dilation, **factory) for dilation in (1, 3, 9)),
        ])

    def forward(self, x: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        activation, upsample, *units = self.block
        x = upsample(activation(x), state)
        for unit in units:
            x = unit(x, state)
        return x


class CodecDecoder(nn.Module):
    """The speech tokenizer's `decoder.*`: codes [batch, frames, 16] -> waveform [batch, frames * 1920]."""

    def __init__(self, config: CodecDecoderConfig, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.config = config
        latent = config.latent_dim
        self.quantizer = CodeDequantizer(config, **factory)
        self.pre_conv = CausalConv1d(config.codebook_dim, latent, 3, **factory)
        self.pre_transformer = DecoderTransformer(config, **factory)
        self.upsample = nn.ModuleList(
            nn.ModuleList([CausalTransposedConv1d(latent, latent, ratio, ratio, **factory),
                           ConvNeXtBlock(latent, **factory)])
            for ratio in config.upsampling_ratios)
        widths = [config.decoder_dim // 2**i for i in range(len(config.upsample_rates) + 1)]
        self.decoder = nn.ModuleList([
            CausalConv1d(latent, widths[0], 7, **factory),
            *(DecoderBlock(widths[i], widths[i + 1], rate, **factory) for i, rate in enumerate(config.upsample_rates)),
            SnakeBeta(widths[-1], **factory),
            CausalConv1d(widths[-1], 1, 7, **factory),
        ])
        self.samples_per_frame = math.prod(config.upsample_rates) * math.prod(config.upsampling_ratios)

    def forward(self, codes: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """codes [batch, frames, num_quantizers] in [0, codebook_size) -> waveform in [-1, 1]."""
        if codes.dim() != 3 or codes.shape[-1] != self.config.num_quantizers:
            raise InputError(f"codec decoder expects codes [batch, frames, {self.config.num_quantizers}], "
                             f"got shape {tuple(codes.shape)}")
        h = self.pre_conv(self.quantizer(codes), state)
        h = self.pre_transformer(h.transpose(1, 2), state).transpose(1, 2)
        for transposed_conv, convnext in self.upsample:
            h = convnext(transposed_conv(h, state), state)
        conv_in, *blocks, activation, conv_out = self.decoder
        h = conv_in(h, state)
        for block in blocks:
            h = block(h, state)
        if fused(h):
            h = activated_conv(conv_out, activation, h, state).add_(conv_out.conv.bias[:, None])
        else:
            h = conv_out(activation(h), state)
        return h.squeeze(1).clamp(-1.0, 1.0).float()


def channels_last_convolutions(decoder: nn.Module) -> None:
    """Lay out the weight of every full (not depthwise) convolution with more than one tap channels-last
    ([out, taps, in] in memory): the same shape and values, as the fused path's 2-D convolutions read them.
    Laid out [out, in, taps], cuDNN's bf16 kernels converted each weight on every call (the first one-frame
    decode on an H100: 39 layout conversions, 27 % of its kernel time, BENCHMARKS.md 2026-12-07)."""
    for module in decoder.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and module.groups == 1 and module.kernel_size[0] > 1:
            module.weight.data = module.weight.data.transpose(1, 2).contiguous().transpose(1, 2)


@torch.no_grad()
def decode_official(decoder: CodecDecoder, codes: torch.Tensor, chunk_frames: int = 300,
                    left_context_frames: int = 25) -> list[torch.Tensor]:
    """Decode exactly as the official `Qwen3TTSTokenizerV2Model.decode` (spec 7.2 items 6-7).

    codes [batch, frames, 16], each item right-padded with -1. Frames are decoded in chunks of 300, each
    with up to 25 earlier frames of context whose audio is dropped; the result is therefore not a
    one-pass decode past frame 300. Returns one waveform per item, `count(code 0 > -1) * 1920` samples.
    """
    if codes.dim() != 3 or codes.shape[-1] != decoder.config.num_quantizers:
        raise InputError(f"codes must be [batch, frames, {decoder.config.num_quantizers}] (pad with -1), "
                         f"got shape {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) >= decoder.config.codebook_size:
        raise InputError(f"codes must be below the codebook size {decoder.config.codebook_size}, "
                         f"got {int(codes.max())}")
    lengths = ((codes[..., 0] > -1).sum(1) * decoder.samples_per_frame).tolist()
    codes = codes.clamp(min=0)
    pieces = []
    for start in range(0, codes.shape[1], chunk_frames):
        context = min(left_context_frames, start)
        wav = decoder(codes[:, start - context: start + chunk_frames])
        pieces.append(wav[:, context * decoder.samples_per_frame:])
    if not pieces:
        return [codes.new_zeros(0, dtype=torch.float32) for _ in lengths]
    wav = torch.cat(pieces, dim=-1)
    return [item[:length] for item, length in zip(wav, lengths)]
