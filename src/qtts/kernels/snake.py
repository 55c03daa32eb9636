"""SnakeBeta, the codec decoder's activation: x + 1/(exp(beta) + 1e-9) * sin(exp(alpha) * x)^2, and the
elementwise work around the decoder's convolutions fused into it.

alpha and beta are per-channel and stored in log space. The decoder calls it on every block input at
every sample rate, so it is the decoder's hottest elementwise op. The fused kernel also takes what the
decoder would otherwise do in passes of their own over the same samples: the bias of the convolution in
front (PyTorch adds a cuDNN convolution's bias in a separate pass), a residual add, and writing into a
strided view (the left-padded input of the causal convolution behind it, instead of a `torch.cat`).
Any layout is read and written at its strides; the fused decoder's activations are time-major.
"""

from __future__ import annotations

import torch

from qtts.errors import InputError
from qtts.kernels import cdiv, enabled, jit, round_to, sin, tl, use_libdevice

NO_DIV_BY_ZERO = 1e-9


def snake_beta_reference(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """x [B, C, T]; alpha, beta [C] (log scale)."""
    alpha = torch.exp(alpha)[None, :, None]
    beta = torch.exp(beta)[None, :, None]
    return x + (1.0 / (beta + NO_DIV_BY_ZERO)) * torch.sin(x * alpha).pow(2)


def residual_add_reference(x: torch.Tensor, update: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x + (update + bias): a residual unit's output, `update` its last convolution without the bias."""
    return x + (update + bias[None, :, None])


@jit
def _snake_beta_kernel(
    x_ptr, update_ptr, bias_ptr, alpha_ptr, beta_ptr, sum_ptr, out_ptr, channels, length,
    x_sb, x_sc, x_st, u_sb, u_sc, u_st, o_sb, o_sc, o_st,
    HAS_UPDATE: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, LIBDEVICE: tl.constexpr,
):
    """y = x (+ update) (+ bias[channel]) in float32, rounded once; with an update, y is stored to sum_ptr
    (laid out as update); with ACTIVATE, snake(y) to out_ptr. Programs (batch, sample block, channel
    block) of [BLOCK_T, BLOCK_C] tiles; every tensor at its own (batch, channel, sample) strides. Triton
    specialises a stride of 1, so the tile's loads run along whichever dimension lies contiguous: the
    channels of the decoder's time-major activations."""
    b = tl.program_id(0).to(tl.int64)
    t0, c0 = tl.program_id(1) * BLOCK_T, tl.program_id(2) * BLOCK_C
    t, c = tl.arange(0, BLOCK_T)[:, None], tl.arange(0, BLOCK_C)[None, :]
    c_ok = c0 + c < channels
    mask = (t0 + t < length) & c_ok
    # 64-bit addresses of the tile's corner, 32-bit offsets within it (fewer instructions per element)
    t0, c0_wide = t0.to(tl.int64), c0.to(tl.int64)
    x = tl.load(x_ptr + (b * x_sb + t0 * x_st + c0_wide * x_sc) + (t * x_st + c * x_sc), mask=mask, other=0.0)
    y = x.to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + c0 + c, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_UPDATE:
        at = (b * u_sb + t0 * u_st + c0_wide * u_sc) + (t * u_st + c * u_sc)
        update = tl.load(update_ptr + at, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            update = update + bias
        y = round_to(y + update, x.dtype).to(tl.float32)
        tl.store(sum_ptr + at, y.to(x.dtype), mask=mask)
    elif HAS_BIAS:
        y = round_to(y + bias, x.dtype).to(tl.float32)
    if ACTIVATE:
        alpha = tl.exp(tl.load(alpha_ptr + c0 + c, mask=c_ok, other=0.0).to(tl.float32))
        inv_beta = 1.0 / (tl.exp(tl.load(beta_ptr + c0 + c, mask=c_ok, other=0.0).to(tl.float32)) + 1e-9)
        s = sin(y * alpha, LIBDEVICE)  # (1e-9: NO_DIV_BY_ZERO)
        at = (b * o_sb + t0 * o_st + c0_wide * o_sc) + (t * o_st + c * o_sc)
        tl.store(out_ptr + at, round_to(y + inv_beta * (s * s), x.dtype), mask=mask)


def block_shape(channels: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_C, warps): channel blocks of the largest power of two up to 64 that divides the
    channels (96 -> 32: no masked lanes), 2048 values a program. On an H100, at the shapes of every
    decoder width's snake call (bench/snake_probe.py), within 3 % of the best of 14 block shapes at each:
    0.85 ms for a 64 x 16 decode's five against 0.93 ms with 4096 values a program and 1.11 ms for the
    channel-major kernel before it, 2.6-2.8 us a call at one frame against 5 and 2.5-4.9 us."""
    block_c = max(16, min(64, channels & -channels))
    return 2048 // block_c, block_c, 4


def _launch(x, update, bias, alpha, beta, summed, out, shape=None):
    batch, channels, length = x.shape
    block_t, block_c, warps = shape or block_shape(channels)
    activate = out is not None
    u = update if update is not None else x
    o = out if activate else x
    _snake_beta_kernel[(batch, cdiv(length, block_t), cdiv(channels, block_c))](
        x, u, bias if bias is not None else x, alpha if activate else x, beta if activate else x,
        summed if summed is not None else x, o, channels, length, *x.stride(), *u.stride(), *o.stride(),
        HAS_UPDATE=update is not None, HAS_BIAS=bias is not None, ACTIVATE=activate,
        BLOCK_T=block_t, BLOCK_C=block_c, LIBDEVICE=use_libdevice(), num_warps=warps,
    )


def _check(x: torch.Tensor, *per_channel: torch.Tensor | None) -> None:
    if x.dim() != 3 or any(p is not None and p.shape != (x.shape[1],) for p in per_channel):
        raise InputError(f"the decoder's elementwise kernel wants x [B, C, T] and per-channel vectors [C]; got "
                         f"{tuple(x.shape)}, {[tuple(p.shape) for p in per_channel if p is not None]}")


def empty_like_layout(x: torch.Tensor) -> torch.Tensor:
    """An empty [B, C, T] tensor laid out as x: time-major (channels innermost, as the fused decoder keeps
    its activations) when x is, else contiguous. (`torch.empty_like` keeps the layout of dense tensors
    only, not of a convolution's output cut to its valid samples.)"""
    batch, channels, length = x.shape
    if x.stride(1) == 1 and channels > 1:
        return x.new_empty(batch, length, channels).transpose(1, 2)
    return x.new_empty(x.shape)


def snake_beta_triton(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, bias: torch.Tensor | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """snake(x + bias) (bias rounded in first, as a convolution's output with its bias would be), into
    `out` when given (any [B, C, T] view, e.g. the right part of a left-padded buffer), else into a new
    tensor laid out as x. x may be a view too (a convolution's output cut to its valid part is read in
    place)."""
    _check(x, alpha, beta, bias)
    if out is None:
        out = empty_like_layout(x)
    elif out.shape != x.shape or out.dtype != x.dtype:
        raise InputError(f"snake_beta's out must be a {tuple(x.shape)} {x.dtype} view, got {tuple(out.shape)} "
                         f"{out.dtype}")
    _launch(x, None, bias, alpha, beta, None, out)
    return out


def residual_add_triton(x: torch.Tensor, update: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x + (update + bias) rounded once, laid out as update."""
    _check(x, bias)
    if update.shape != x.shape:
        raise InputError(f"residual add of {tuple(update.shape)} to {tuple(x.shape)}")
    summed = empty_like_layout(update)
    if summed.stride() != update.stride():  # the sum is written at update's strides
        update = update.contiguous() if summed.is_contiguous() else update.transpose(1, 2).contiguous().transpose(1, 2)
    _launch(x, update, bias, None, None, summed, None)
    return summed


def snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    if enabled(x.device):
        return snake_beta_triton(x, alpha, beta)
    return snake_beta_reference(x, alpha, beta)
