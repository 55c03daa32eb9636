"""The SwiGLU gate, silu(gate) * up, in one pass over the two projection outputs.

Rounds like the eager ops: silu is computed in float32 and rounded to the activation dtype before the
product, which is rounded again.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from qtts.errors import InputError
from qtts.kernels import cdiv, enabled, jit, round_to, tl


def silu_mul_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(gate_ptr + offs, mask=mask, other=0.0)
    dtype = g.dtype
    g = g.to(tl.float32)
    silu = round_to(g / (1.0 + tl.exp(-g)), dtype).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, round_to(silu * u, dtype), mask=mask)


def silu_mul_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise InputError(f"gate and up must match: {tuple(gate.shape)} {gate.dtype} vs {tuple(up.shape)} {up.dtype}")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    block = 1024
    _silu_mul_kernel[(cdiv(gate.numel(), block),)](gate, up, out, gate.numel(), BLOCK=block, num_warps=4)
    return out


def silu_mul_halves_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """The gate over one fused projection output: gate_up [..., 2F] = [gate | up] -> [..., F]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return silu_mul_reference(gate, up)


@jit
def _silu_mul_halves_kernel(gate_up_ptr, out_ptr, n, width, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    gate_offs = (offs // width) * (2 * width) + offs % width
    g = tl.load(gate_up_ptr + gate_offs, mask=mask, other=0.0)
    dtype = g.dtype
    g = g.to(tl.float32)
    silu = round_to(g / (1.0 + tl.exp(-g)), dtype).to(tl.float32)
    u = tl.load(gate_up_ptr + gate_offs + width, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, round_to(silu * u, dtype), mask=mask)


def silu_mul_halves_triton(gate_up: torch.Tensor) -> torch.Tensor:
    gate_up = gate_up.contiguous()
    width = gate_up.shape[-1] // 2
    out = gate_up.new_empty(*gate_up.shape[:-1], width)
    block = 1024
    _silu_mul_halves_kernel[(cdiv(out.numel(), block),)](gate_up, out, out.numel(), width, BLOCK=block, num_warps=4)
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if enabled(gate.device):
        return silu_mul_triton(gate, up)
    return silu_mul_reference(gate, up)
