"""RMSNorm with the residual add fused in front: one read of each input row, one write of each output.

Numerics are the official ones: the sum is rounded to the activation dtype (as the residual stream is),
the variance is taken in float32, the normalised row is rounded to the activation dtype and only then
multiplied by the weight. A per-channel `scale` of the added branch (the codec transformer's LayerScale)
is rounded before the add, as the eager product is.
"""

from __future__ import annotations

import torch

from qtts.errors import InputError
from qtts.kernels import enabled, jit, next_power_of_2, round_to, tl


def add_rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rms_norm(x + residual) * weight, x + residual); without a residual, x is normalised alone.
    With `scale` [cols], x is scaled first: the sum is residual + scale * x."""
    if scale is not None:
        x = scale * x
    if residual is not None:
        x = x + residual
    x32 = x.to(torch.float32)
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed, x


@jit
def _add_rms_norm_kernel(
    x_ptr, residual_ptr, scale_ptr, weight_ptr, out_ptr, sum_ptr, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0)
    dtype = x.dtype
    x = x.to(tl.float32)
    if HAS_SCALE:
        x = round_to(tl.load(scale_ptr + cols, mask=mask, other=0.0).to(tl.float32) * x, dtype).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        x = round_to(x + r, dtype)
        tl.store(sum_ptr + row * n_cols + cols, x, mask=mask)
        x = x.to(tl.float32)
    variance = tl.sum(x * x, axis=0) / n_cols
    normed = round_to(x * tl.math.rsqrt(variance + eps), dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * n_cols + cols, round_to(normed * w, dtype), mask=mask)


def add_rms_norm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if scale is not None and residual is None:
        raise InputError("a scale applies to the branch added to a residual: pass the residual too")
    n_cols = x.shape[-1]
    x = x.contiguous()
    out = torch.empty_like(x)
    summed = torch.empty_like(x) if residual is not None else x
    residual = residual.contiguous() if residual is not None else x
    block = next_power_of_2(n_cols)
    _add_rms_norm_kernel[(x.numel() // n_cols,)](
        x, residual, weight if scale is None else scale, weight, out, summed, n_cols, eps,
        HAS_RESIDUAL=residual is not x, HAS_SCALE=scale is not None, BLOCK=block,
        num_warps=min(16, max(1, block // 256)),
    )
    return out, summed


def add_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if enabled(x.device):
        return add_rms_norm_triton(x, weight, eps, residual, scale)
    return add_rms_norm_reference(x, weight, eps, residual, scale)
