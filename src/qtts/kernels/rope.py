"""RoPE by precomputed tables in one launch: the codec transformer's rotation of its queries and its window
of keys, which eager PyTorch does in five passes each (two products, a negation, a concatenation, a sum).

Rounds like the eager ops: each product and the sum round to the activation dtype.
"""

from __future__ import annotations

import torch

from qtts.errors import InputError
from qtts.kernels import cdiv, enabled, jit, next_power_of_2, round_to, tl
from qtts.models.layers import apply_rope


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotated by tables cos/sin [T, D] (row t rotates x's step t)."""
    return apply_rope(x, cos[None], sin[None])


@jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, heads, steps, x_batch_stride, x_head_stride, x_step_stride,
                 table_stride, HALF: tl.constexpr, BLOCK_T: tl.constexpr):
    """One program per (batch and head, block of BLOCK_T steps); out is contiguous [B, H, T, 2 * HALF]."""
    row = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    live = (t < steps)[:, None]
    half = tl.arange(0, HALF)[None, :]
    x = x_ptr + (row // heads) * x_batch_stride + (row % heads) * x_head_stride + t[:, None] * x_step_stride + half
    x1 = tl.load(x, mask=live, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = tl.load(x + HALF, mask=live, other=0.0).to(tl.float32)
    table = t[:, None] * table_stride + half
    # rotate_half(x) = [-x2, x1]; the tables' halves are equal (cat(freqs, freqs)) but read as stored
    c1 = tl.load(cos_ptr + table, mask=live, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + table + HALF, mask=live, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + table, mask=live, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + table + HALF, mask=live, other=0.0).to(tl.float32)
    o1 = round_to(x1 * c1, dtype).to(tl.float32) + round_to(-x2 * s1, dtype).to(tl.float32)
    o2 = round_to(x2 * c2, dtype).to(tl.float32) + round_to(x1 * s2, dtype).to(tl.float32)
    out = out_ptr + (row * steps + t[:, None]) * (2 * HALF) + half
    tl.store(out, round_to(o1, dtype), mask=live)
    tl.store(out + HALF, round_to(o2, dtype), mask=live)


def rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    batch, heads, steps, head_dim = x.shape
    if head_dim & (head_dim - 1) or head_dim < 4 or x.stride(3) != 1:
        raise InputError(f"the RoPE kernel needs packed heads of a power-of-two width (>= 4), got {tuple(x.shape)} "
                         f"with strides {x.stride()}")
    if cos.shape != (steps, head_dim) or sin.shape != cos.shape or cos.stride() != sin.stride() or cos.stride(1) != 1:
        raise InputError(f"RoPE tables must be [{steps}, {head_dim}] with packed rows, got {tuple(cos.shape)}")
    out = torch.empty(batch, heads, steps, head_dim, device=x.device, dtype=x.dtype)
    block_t = min(16, next_power_of_2(steps))
    _rope_kernel[(batch * heads, cdiv(steps, block_t))](
        x, cos, sin, out, heads, steps, x.stride(0), x.stride(1), x.stride(2), cos.stride(0),
        HALF=head_dim // 2, BLOCK_T=block_t, num_warps=1 if block_t * head_dim <= 512 else 4,
    )
    return out


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return rope_triton(x, cos, sin) if enabled(x.device) else rope_reference(x, cos, sin)
