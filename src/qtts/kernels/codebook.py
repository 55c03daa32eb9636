"""The codec's residual codebooks in one launch: each code's vector (running sum over clamped usage) looked up
and the codebooks' vectors summed, where eager PyTorch takes five passes a codebook (clamp, two gathers, a
division, an add): about 80 launches for a streamed one-frame chunk.

Rounds like the eager ops: the clamped usage, each quotient and each partial sum round to the tables' dtype,
and the sum runs over the codebooks in order.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from qtts.kernels import cdiv, enabled, jit, next_power_of_2, round_to, tl


def codebook_sum_reference(codes: torch.Tensor, sums: torch.Tensor, usage: torch.Tensor, floor: float) -> torch.Tensor:
    """codes [..., n] (one code per codebook), sums [n, size, dim], usage [n, size] -> [..., dim]:
    sum over codebooks i of sums[i, code_i] / usage[i, code_i].clamp(min=floor), as the official codebooks
    compute it (dividing only the gathered rows gives the full table's values)."""
    total = None
    for index in range(sums.shape[0]):
        books = codes[..., index]
        vectors = F.embedding(books, sums[index]) / usage[index].clamp(min=floor)[books][..., None]
        total = vectors if total is None else total + vectors
    return total


@jit
def _codebook_sum_kernel(codes_ptr, sums_ptr, usage_ptr, out_ptr, size, dim, floor,
                         BOOKS: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (row of codes, block of dims)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < dim
    dtype = sums_ptr.dtype.element_ty
    total = tl.zeros((BLOCK,), tl.float32)
    for index in tl.static_range(BOOKS):
        code = tl.load(codes_ptr + row * BOOKS + index).to(tl.int64)
        usage = round_to(tl.maximum(tl.load(usage_ptr + index * size + code).to(tl.float32), floor), dtype)
        vector = tl.load(sums_ptr + (index * size + code) * dim + cols, mask=mask, other=0.0).to(tl.float32)
        quotient = round_to(tl.math.div_rn(vector, usage.to(tl.float32)), dtype).to(tl.float32)  # IEEE, as eager
        total = quotient if index == 0 else round_to(total + quotient, dtype).to(tl.float32)
    tl.store(out_ptr + row * dim + cols, total.to(dtype), mask=mask)


def codebook_sum_triton(codes: torch.Tensor, sums: torch.Tensor, usage: torch.Tensor, floor: float) -> torch.Tensor:
    books, size, dim = sums.shape
    flat = codes.reshape(-1, books).contiguous()
    out = sums.new_empty(*codes.shape[:-1], dim)
    block = min(256, next_power_of_2(dim))
    _codebook_sum_kernel[(flat.shape[0], cdiv(dim, block))](
        flat, sums.contiguous(), usage.contiguous(), out, size, dim, floor, BOOKS=books, BLOCK=block, num_warps=2,
    )
    return out


def codebook_sum(codes: torch.Tensor, sums: torch.Tensor, usage: torch.Tensor, floor: float) -> torch.Tensor:
    impl = codebook_sum_triton if enabled(codes.device) else codebook_sum_reference
    return impl(codes, sums, usage, floor)
