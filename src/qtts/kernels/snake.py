"""SnakeBeta, the codec decoder's activation: x + 1/(exp(beta) + 1e-9) * sin(exp(alpha) * x)^2.

alpha and beta are per-channel and stored in log space. The decoder calls it on every block input at
every sample rate, so it is the decoder's hottest elementwise op: one read and one write of x.
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


@jit
def _snake_beta_kernel(
    x_ptr, alpha_ptr, beta_ptr, out_ptr, channels, length, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < length
    channel = row % channels
    alpha = tl.exp(tl.load(alpha_ptr + channel).to(tl.float32))
    inv_beta = 1.0 / (tl.exp(tl.load(beta_ptr + channel).to(tl.float32)) + 1e-9)  # NO_DIV_BY_ZERO
    x = tl.load(x_ptr + row * length + offs, mask=mask, other=0.0)
    x32 = x.to(tl.float32)
    s = sin(x32 * alpha, LIBDEVICE)
    tl.store(out_ptr + row * length + offs, round_to(x32 + inv_beta * (s * s), x.dtype), mask=mask)


def snake_beta_triton(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    if x.dim() != 3 or alpha.shape != (x.shape[1],) or beta.shape != (x.shape[1],):
        raise InputError(f"snake_beta wants x [B, C, T] and alpha, beta [C]; got {tuple(x.shape)}, "
                         f"{tuple(alpha.shape)}, {tuple(beta.shape)}")
    x = x.contiguous()
    out = torch.empty_like(x)
    batch, channels, length = x.shape
    block = 1024
    _snake_beta_kernel[(batch * channels, cdiv(length, block))](
        x, alpha, beta, out, channels, length, BLOCK=block, LIBDEVICE=use_libdevice(), num_warps=4,
    )
    return out


def snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    if enabled(x.device):
        return snake_beta_triton(x, alpha, beta)
    return snake_beta_reference(x, alpha, beta)
