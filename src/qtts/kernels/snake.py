"""SnakeBeta, the codec decoder's activation: x + 1/(exp(beta) + 1e-9) * sin(exp(alpha) * x)^2, and the
elementwise work around the decoder's convolutions fused into it.

alpha and beta are per-channel and stored in log space. The decoder calls it on every block input at
every sample rate, so it is the decoder's hottest elementwise op. The fused kernel also takes what the
decoder would otherwise do in passes of their own over the same samples: the bias of the convolution in
front (PyTorch adds a cuDNN convolution's bias in a separate pass), a residual add, and writing into a
strided view (the left-padded input of the causal convolution behind it, instead of a `torch.cat`).
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
    x_ptr, update_ptr, bias_ptr, alpha_ptr, beta_ptr, sum_ptr, out_ptr, channels, length, x_row_stride,
    out_batch_stride, out_channel_stride,
    HAS_UPDATE: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATE: tl.constexpr,
    BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr,
):
    """y = x (+ update) (+ bias[channel]) in float32, rounded once; with an update, y is stored to sum_ptr
    (contiguous); with ACTIVATE, snake(y) to out_ptr (any batch and channel strides). x's rows (one per
    batch and channel) lie x_row_stride apart: a contiguous tensor, or its first `length` samples."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < length
    channel = row % channels
    x = tl.load(x_ptr + row * x_row_stride + offs, mask=mask, other=0.0)
    y = x.to(tl.float32)
    if HAS_UPDATE:
        update = tl.load(update_ptr + row * length + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            update = update + tl.load(bias_ptr + channel).to(tl.float32)
        y = round_to(y + update, x.dtype).to(tl.float32)
        tl.store(sum_ptr + row * length + offs, y.to(x.dtype), mask=mask)
    elif HAS_BIAS:
        y = round_to(y + tl.load(bias_ptr + channel).to(tl.float32), x.dtype).to(tl.float32)
    if ACTIVATE:
        alpha = tl.exp(tl.load(alpha_ptr + channel).to(tl.float32))
        inv_beta = 1.0 / (tl.exp(tl.load(beta_ptr + channel).to(tl.float32)) + 1e-9)  # NO_DIV_BY_ZERO
        s = sin(y * alpha, LIBDEVICE)
        out_row = (row // channels) * out_batch_stride + channel * out_channel_stride
        tl.store(out_ptr + out_row + offs, round_to(y + inv_beta * (s * s), x.dtype), mask=mask)


def _launch(x, update, bias, alpha, beta, summed, out):
    batch, channels, length = x.shape
    block = 1024
    activate = out is not None
    _snake_beta_kernel[(batch * channels, cdiv(length, block))](
        x, update if update is not None else x, bias if bias is not None else x,
        alpha if activate else x, beta if activate else x, summed if summed is not None else x,
        out if activate else x, channels, length, x.stride(1),
        out.stride(0) if activate else 0, out.stride(1) if activate else 0,
        HAS_UPDATE=update is not None, HAS_BIAS=bias is not None, ACTIVATE=activate,
        BLOCK=block, LIBDEVICE=use_libdevice(), num_warps=4,
    )


def _check(x: torch.Tensor, *per_channel: torch.Tensor | None) -> torch.Tensor:
    """x as the kernel reads it: rows of contiguous samples at one stride (a convolution's output cut to
    its valid part is read in place)."""
    if x.dim() != 3 or any(p is not None and p.shape != (x.shape[1],) for p in per_channel):
        raise InputError(f"the decoder's elementwise kernel wants x [B, C, T] and per-channel vectors [C]; got "
                         f"{tuple(x.shape)}, {[tuple(p.shape) for p in per_channel if p is not None]}")
    if x.stride(2) != 1 or x.stride(0) != x.shape[1] * x.stride(1):
        x = x.contiguous()
    return x


def snake_beta_triton(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, bias: torch.Tensor | None = None,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """snake(x + bias) (bias rounded in first, as a convolution's output with its bias would be), into
    `out` when given: a [B, C, T] view whose last dimension is contiguous (e.g. the right part of a
    left-padded buffer)."""
    x = _check(x, alpha, beta, bias)
    if out is None:
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    elif out.shape != x.shape or out.stride(-1) != 1 or out.dtype != x.dtype:
        raise InputError(f"snake_beta's out must be a {tuple(x.shape)} {x.dtype} view with contiguous samples")
    _launch(x, None, bias, alpha, beta, None, out)
    return out


def residual_add_triton(x: torch.Tensor, update: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    x = _check(x, bias)
    if update.shape != x.shape:
        raise InputError(f"residual add of {tuple(update.shape)} to {tuple(x.shape)}")
    summed = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    update = update.contiguous()
    _launch(x, update, bias, None, None, summed, None)
    return summed


def snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    if enabled(x.device):
        return snake_beta_triton(x, alpha, beta)
    return snake_beta_reference(x, alpha, beta)
