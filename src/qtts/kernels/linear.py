"""The decode step's matrix products with their neighbours fused in: the RMSNorm in front, and behind either
the residual add or the SwiGLU gate.

At decode a weight matrix meets a handful of rows, so each product reads the whole matrix once and is bound
by memory and launch latency, not arithmetic. Fusing the norm, the residual add and the gate into the
product removes three launches per layer and the activation round trips between them.

With `pdl` (Hopper and later, CUDA graphs included), the kernel is launched as a programmatic dependent of
the kernel before it: it starts while that one finishes, loads its first weight tile (weights are never
written by an earlier kernel) and only then waits for the earlier kernel's results. Every PDL kernel waits
before it writes anything or finishes, so completion still orders the whole chain.

Numerics are the eager ones: the norm rounds as `add_rms_norm_reference`, the product accumulates in float32
and is rounded to the activation dtype, then the gate or the residual add round as the eager ops do.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from qtts.errors import InputError
from qtts.kernels import (
    cdiv, enabled, interpreted, jit, next_power_of_2, pdl_launch, round_to, tl, wait_for_previous,
)
from qtts.kernels.rms_norm import add_rms_norm_reference
from qtts.kernels.swiglu import silu_mul_halves_reference


def fused_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
    residual: torch.Tensor | None = None, gated: bool = False,
) -> torch.Tensor:
    """x [..., K] @ weight [N, K].T, with

    - `norm_weight`: x is first RMS-normalised and scaled (the layer's pre-norm);
    - `gated`: weight is [gate; up] (N = 2F) and the result is silu(gate) * up [..., F];
    - `residual` [..., N]: the result is residual + product (the block's residual add).
    """
    if norm_weight is not None:
        x = add_rms_norm_reference(x, norm_weight, eps)[0]
    y = F.linear(x, weight)
    if gated:
        y = silu_mul_halves_reference(y)
    if residual is not None:
        y = residual + y
    return y


@jit
def _product(acc, h, w, USE_DOT: tl.constexpr, DOT_F32: tl.constexpr):
    """acc [M, N] += h [M, K] @ w [N, K].T: tensor cores from 16 rows on, else products and row sums.
    `DOT_F32` takes the product in float32 (exact for bfloat16 inputs): Triton's interpreter gets bfloat16
    `tl.dot` wrong."""
    if USE_DOT:
        if DOT_F32 or w.dtype == tl.float32:
            acc += tl.dot(h, tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(h.to(w.dtype), tl.trans(w))
    else:
        acc += tl.sum(h[:, None, :] * w[None, :, :].to(tl.float32), axis=2)
    return acc


@jit
def _fused_linear_kernel(
    x_ptr, w_ptr, norm_ptr, res_ptr, out_ptr, n_rows, K, N, eps,
    NORM: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
    DOT_F32: tl.constexpr, PDL: tl.constexpr,
):
    dtype = x_ptr.dtype.element_ty
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < n_rows, n < N
    kk = tl.arange(0, BLOCK_K)
    # gated: row n of the output takes gate row n and up row N + n of the [gate; up] weight
    w_rows = n.to(tl.int64)[:, None] * K + kk[None, :]
    if not USE_DOT:  # one row: the first weight tile is loaded before waiting on the previous kernel
        w_ok = n_ok[:, None] & (kk[None, :] < K)
        w = tl.load(w_ptr + w_rows, mask=w_ok, other=0.0)
        if GATED:
            w_up = tl.load(w_ptr + N * K + w_rows, mask=w_ok, other=0.0)
    wait_for_previous(PDL)  # only weights were read so far

    x_rows = m.to(tl.int64)[:, None] * K
    if NORM:
        squares = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            xs = tl.load(x_ptr + x_rows + k + kk[None, :], mask=m_ok[:, None] & (k + kk[None, :] < K),
                         other=0.0).to(tl.float32)
            squares += tl.sum(xs * xs, axis=1)
        inv_rms = tl.math.rsqrt(squares / K + eps)[:, None]

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if GATED:
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        w_ok = n_ok[:, None] & (k + kk[None, :] < K)
        if USE_DOT:  # straight loads, which Triton pipelines
            w = tl.load(w_ptr + w_rows + k, mask=w_ok, other=0.0)
            if GATED:
                w_up = tl.load(w_ptr + N * K + w_rows + k, mask=w_ok, other=0.0)
        elif k > 0:
            w = tl.load(w_ptr + w_rows + k, mask=w_ok, other=0.0)
            if GATED:
                w_up = tl.load(w_ptr + N * K + w_rows + k, mask=w_ok, other=0.0)
        x_ok = m_ok[:, None] & (k + kk[None, :] < K)
        h = tl.load(x_ptr + x_rows + k + kk[None, :], mask=x_ok, other=0.0).to(tl.float32)
        if NORM:
            g = tl.load(norm_ptr + k + kk, mask=k + kk < K, other=0.0).to(tl.float32)[None, :]
            h = round_to(round_to(h * inv_rms, dtype).to(tl.float32) * g, dtype).to(tl.float32)
        acc = _product(acc, h, w, USE_DOT, DOT_F32)
        if GATED:
            acc_up = _product(acc_up, h, w_up, USE_DOT, DOT_F32)

    y = round_to(acc, dtype).to(tl.float32)
    if GATED:  # silu rounded to the activation dtype before the product, as the eager ops round
        silu = round_to(y / (1.0 + tl.exp(-y)), dtype).to(tl.float32)
        y = round_to(silu * round_to(acc_up, dtype).to(tl.float32), dtype).to(tl.float32)
    out_offs = m.to(tl.int64)[:, None] * N + n[None, :]
    out_ok = m_ok[:, None] & n_ok[None, :]
    if RESIDUAL:
        y += tl.load(res_ptr + out_offs, mask=out_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + out_offs, round_to(y, dtype), mask=out_ok)


# One-row (decode) block configurations measured on an H100 (bench/kernel_probe.py, PDL launches, 40 calls
# over distinct weights), by (N, K, gated): each the fastest of BLOCK_N 2-32 x BLOCK_K 256-4096 x 2-8 warps
# for the products of the 0.6B and 1.7B models. Few output rows per program and long stretches of K win:
# every SM streams weights, 1.5-2.6 TB/s here against 0.8-2.1 TB/s for cuBLAS with the norm, gate and add
# as separate kernels.
DECODE_CONFIGS = {
    (4096, 1024, False): (8, 1024, 2), (1024, 2048, False): (8, 2048, 4), (3072, 1024, True): (8, 1024, 2),
    (1024, 3072, False): (2, 4096, 4), (2048, 1024, False): (8, 1024, 4), (3072, 1024, False): (8, 1024, 4),
    (4096, 2048, False): (4, 1024, 4), (2048, 2048, False): (8, 2048, 4), (6144, 2048, True): (4, 2048, 4),
    (2048, 6144, False): (2, 2048, 2),
}


def linear_config(rows: int, n: int, k: int, gated: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for an [rows, k] x [n, k] product: the measured decode table, else
    about 32 KB of weights per program and step; for many rows (prefill) tensor-core tiles."""
    if rows > 1:
        return 64, 64, 4
    if (n, k, gated) in DECODE_CONFIGS:
        return DECODE_CONFIGS[n, k, gated]
    block_k = min(2048, next_power_of_2(k))
    return max(2, min(8, 16384 // (block_k * (2 if gated else 1)))), block_k, 4


def fused_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
    residual: torch.Tensor | None = None, gated: bool = False, out: torch.Tensor | None = None,
    pdl: bool = False, config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """`fused_linear_reference` in one launch. `out` may be `residual` itself (each program reads its own
    residual elements before it writes them). `config` overrides `linear_config` (the probe sweeps it)."""
    k = x.shape[-1]
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    if weight.shape[1] != k or (gated and weight.shape[0] % 2) or (gated and residual is not None):
        raise InputError(f"fused_linear: x [..., {k}] and weight {tuple(weight.shape)} (gated={gated}, "
                         f"residual={residual is not None}) do not fit")
    x2 = x.reshape(-1, k).contiguous()
    rows = x2.shape[0]
    weight = weight.contiguous()
    if out is None:
        out = x.new_empty(*x.shape[:-1], n)
    if residual is not None and (residual.shape != out.shape or not residual.is_contiguous()):
        raise InputError(f"residual {tuple(residual.shape)} must be contiguous and shaped like the output "
                         f"{tuple(out.shape)}")
    block_n, block_k, warps = config or linear_config(rows, n, k, gated)
    use_dot = rows > 1
    block_m = max(16, min(64, next_power_of_2(rows))) if use_dot else 1
    block_n = max(16, block_n) if use_dot else block_n
    _fused_linear_kernel[(cdiv(n, block_n), cdiv(rows, block_m))](
        x2, weight, norm_weight if norm_weight is not None else weight,
        residual if residual is not None else out, out, rows, k, n, eps,
        NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, USE_DOT=use_dot,
        DOT_F32=interpreted(), PDL=pdl, num_warps=warps, num_stages=3, **pdl_launch(pdl),
    )
    return out


def fused_linear(
    x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
    residual: torch.Tensor | None = None, gated: bool = False,
) -> torch.Tensor:
    impl = fused_linear_triton if enabled(x.device) else fused_linear_reference
    return impl(x, weight, norm_weight=norm_weight, eps=eps, residual=residual, gated=gated)
