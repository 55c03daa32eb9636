"""The decode step's matrix products with their neighbours fused in: the RMSNorm in front, and behind either
the residual add or the SwiGLU gate.

At decode a weight matrix meets a handful of rows (one per request in the batch), so each product reads the
whole matrix once and is bound by memory and launch latency, not arithmetic. Fusing the norm, the residual
add and the gate into the product removes three launches per layer and the activation round trips between
them. One or two rows take a matrix-vector kernel; a batch's rows (up to 128) go through the tensor cores in
tiles.

With `pdl` (Hopper and later, CUDA graphs included), the kernel is launched as a programmatic dependent of
the kernel before it: it starts while that one finishes, loads its first weight tile (weights are never
written by an earlier kernel) and only then waits for the earlier kernel's results. Every PDL kernel waits
before it writes anything or finishes, so completion still orders the whole chain.

Numerics are the eager ones: the norm rounds as `add_rms_norm_reference`, the product accumulates in float32
and is rounded to the activation dtype, then the gate or the residual add round as the eager ops do.
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from qtts.errors import InputError
from qtts.kernels import (
    cdiv, enabled, interpreted, jit, next_power_of_2, pdl_launch, round_to, tl, triton, wait_for_previous,
)
from qtts.kernels.rms_norm import add_rms_norm_reference, add_rms_norm_triton
from qtts.kernels.swiglu import silu_mul_halves_reference, silu_mul_halves_triton


def fused_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
    residual: torch.Tensor | None = None, gated: bool = False, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., K] @ weight [N, K].T (+ bias [N], added before the one rounding, as F.linear does), with

    - `norm_weight`: x is first RMS-normalised and scaled (the layer's pre-norm);
    - `gated`: weight is [gate; up] (N = 2F) and the result is silu(gate) * up [..., F];
    - `residual` [..., N]: the result is residual + product (the block's residual add).
    """
    if norm_weight is not None:
        x = add_rms_norm_reference(x, norm_weight, eps)[0]
    y = F.linear(x, weight, bias)
    if gated:
        y = silu_mul_halves_reference(y)
    if residual is not None:
        y = residual + y
    return y


@jit
def _fused_linear_kernel(
    x_ptr, w_ptr, norm_ptr, res_ptr, bias_ptr, out_ptr, K, N, eps,
    NORM: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ONE_STEP: tl.constexpr, PDL: tl.constexpr,
):
    """Programs (row, output block): BLOCK_N outputs of one row, walking K in BLOCK_K steps (ONE_STEP: K fits
    one). The row is the grid's fastest dimension, so the programs of every row for one output block are
    launched side by side and read its weight tile from memory once between them (the rest from L2).

    What follows the wait is the frame's serial path, so it is kept short:
    - the products are summed in the layout the weight tile is loaded in (8 contiguous elements a thread),
      and the row is loaded in that layout too. The earlier form, a [1, BLOCK_N, BLOCK_K] product, made
      Triton move the whole weight tile through shared memory after the wait (14-30 barriers there against
      2-10, bench/sass_probe.py); on an H100 the one-row frame went from 2.64 to 2.51 ms (0.6B) and 3.41 to
      3.24 ms (1.7B), the two-row one from 3.43 to 2.85 and 4.65 to 3.89 ms (bench/engine_probe.py);
    - a one-step program requests everything the earlier kernels wrote (its row, its residual) at once,
      before any arithmetic, and reads the norm's weight before the wait. Alone, without the layout change,
      this measured 0.05 ms slower at one row and 0.1-0.3 ms faster at two; its share of the gain above is
      not measured."""
    dtype = x_ptr.dtype.element_ty
    row = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    kk = tl.arange(0, BLOCK_K)
    # gated: output n takes gate row n and up row N + n of the [gate; up] weight
    w_rows = n.to(tl.int64)[:, None] * K + kk[None, :]
    w_ok = n_ok[:, None] & (kk[None, :] < K)
    w = tl.load(w_ptr + w_rows, mask=w_ok, other=0.0)
    if GATED:
        w_up = tl.load(w_ptr + N * K + w_rows, mask=w_ok, other=0.0)
    if NORM and ONE_STEP:  # the norm's weight is a weight too: never written by an earlier kernel
        g = tl.load(norm_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)[None, :]
    wait_for_previous(PDL)  # only weights were read so far

    x_row = x_ptr + row * K
    if RESIDUAL:
        res = tl.load(res_ptr + row * N + n, mask=n_ok, other=0.0).to(tl.float32)
    if ONE_STEP:
        h = tl.load(x_row + kk[None, :], mask=kk[None, :] < K, other=0.0).to(tl.float32)
        if NORM:  # the squares from the same row in the 1-D layout the multi-step sum uses: the same rounding
            xs = tl.load(x_row + kk, mask=kk < K, other=0.0).to(tl.float32)
            inv_rms = tl.math.rsqrt(tl.sum(xs * xs, axis=0) / K + eps)
            h = round_to(round_to(h * inv_rms, dtype).to(tl.float32) * g, dtype).to(tl.float32)
        acc = tl.sum(h * w.to(tl.float32), axis=1)
        if GATED:
            acc_up = tl.sum(h * w_up.to(tl.float32), axis=1)
    else:
        if NORM:
            squares = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k in range(0, K, BLOCK_K):
                xs = tl.load(x_row + k + kk, mask=k + kk < K, other=0.0).to(tl.float32)
                squares += xs * xs
            inv_rms = tl.math.rsqrt(tl.sum(squares, axis=0) / K + eps)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            if k > 0:
                w_ok = n_ok[:, None] & (k + kk[None, :] < K)
                w = tl.load(w_ptr + w_rows + k, mask=w_ok, other=0.0)
                if GATED:
                    w_up = tl.load(w_ptr + N * K + w_rows + k, mask=w_ok, other=0.0)
            h = tl.load(x_row + k + kk[None, :], mask=k + kk[None, :] < K, other=0.0).to(tl.float32)
            if NORM:
                g = tl.load(norm_ptr + k + kk, mask=k + kk < K, other=0.0).to(tl.float32)[None, :]
                h = round_to(round_to(h * inv_rms, dtype).to(tl.float32) * g, dtype).to(tl.float32)
            acc += tl.sum(h * w.to(tl.float32), axis=1)
            if GATED:
                acc_up += tl.sum(h * w_up.to(tl.float32), axis=1)

    if BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    y = round_to(acc, dtype).to(tl.float32)
    if GATED:  # silu rounded to the activation dtype before the product, as the eager ops round
        silu = round_to(y / (1.0 + tl.exp(-y)), dtype).to(tl.float32)
        y = round_to(silu * round_to(acc_up, dtype).to(tl.float32), dtype).to(tl.float32)
    if RESIDUAL:
        y += res
    tl.store(out_ptr + row * N + n, round_to(y, dtype), mask=n_ok)


# One-row (decode) block configurations measured on an H100 (bench/kernel_probe.py, PDL launches, 40 calls
# over distinct weights), by (N, K, gated): each the fastest of BLOCK_N 2-32 x BLOCK_K 256-4096 x 2-8 warps
# for the products of the 0.6B and 1.7B models. Few output rows per program and long stretches of K win:
# every SM streams weights, 1.5-2.6 TB/s here against 0.8-2.1 TB/s for cuBLAS with the norm, gate and add
# as separate kernels. Then chosen again by the frame's own time (bench/frame_tune.py, H100, 2026-12-07: each
# candidate in a freshly captured one-row frame, then the best of each shape together against the old table
# in alternating rounds): 1.7B frame 3.41 against 3.47 ms at one row, 4.64 against 4.67 at two. The shapes
# the 0.6B shares with it (all of its own) chose the same blocks or ones within 0.01 ms of them. All of
# this was before the products were summed in the weights' load layout (2026-12-08): not chosen again since.
DECODE_CONFIGS = {
    (4096, 1024, False): (8, 1024, 4), (1024, 2048, False): (4, 2048, 4), (3072, 1024, True): (4, 1024, 2),
    (1024, 3072, False): (2, 4096, 4), (2048, 1024, False): (8, 1024, 4), (3072, 1024, False): (8, 1024, 4),
    (4096, 2048, False): (2, 2048, 4), (2048, 2048, False): (8, 2048, 4), (6144, 2048, True): (2, 2048, 4),
    (2048, 6144, False): (4, 2048, 4),
}


# Up to this many rows, each row gets its own programs, launched beside the other rows' programs for the
# same outputs, so the weights come from L2 after the first row (the predictor's first step has 2 rows).
# Launched the other way round (all of row 0's programs, then row 1's), a 1.7B frame of 2 rows cost 5.10 ms
# against 3.41 ms for 1 row (H100, 2026-12-06), as if the second row read the weights again; this order is
# not measured yet. On the H200 the 1.7B frame of 4 rows cost 7.47 ms this way against 5.49 ms for 8 rows
# through cuBLAS (bench/engine_probe.py).
ROWS_PER_PROGRAM_MAX = 2
GRID_Y_MAX = 65535  # CUDA's limit on a grid's second dimension (the row kernel's output blocks)
# From 3 rows up to this many (a frame's batch; the predictor's first step has 2 rows per request), tiles
# of rows go through the tensor cores behind the Triton norm, with the gate or the residual add fused in
# (one launch fewer than cuBLAS: H100, 64 rows, the talker's o product with its residual add 6.2 us
# against 8.2 us); more rows (prefill) go to cuBLAS between the Triton norm and gate. 0 sends every batch
# to cuBLAS (the probes compare the two).
TILE_ROWS_MAX = 128


def linear_config(rows: int, n: int, k: int, gated: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for a one-row [k] x [n, k] product: the measured table, else about
    32 KB of weights per program and step."""
    if interpreted():  # the interpreter runs programs one after another in Python: few, large ones
        return 64, next_power_of_2(k), 4
    if (n, k, gated) in DECODE_CONFIGS:
        return DECODE_CONFIGS[n, k, gated]
    block_k = min(2048, next_power_of_2(k))
    return max(2, min(8, 16384 // (block_k * (2 if gated else 1)))), block_k, 4


@jit
def _fused_linear_tile_kernel(
    x_ptr, w_ptr, res_ptr, bias_ptr, out_ptr, M, K, N,
    GATED: tl.constexpr, RESIDUAL: tl.constexpr, BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """Programs (output block, row block): BLOCK_N outputs of BLOCK_M rows as tensor-core products, walking K
    in BLOCK_K steps. Each row's sums are the same whatever rows share its tile. The pre-norm is not fused
    here: every program would normalise all the rows again (H100, 64 rows: the talker's q/k/v product took
    31 us so, against 11 us for the norm kernel and cuBLAS; bench/kernel_probe.py --parts tiles).

    IEEE: float32 products in float32 (not TF32), for float32 activations and for the interpreter, whose
    bfloat16 dot is wrong (products of bfloat16 values are exact in float32, so the result is the tensor
    cores' up to the order of the sum)."""
    dtype = x_ptr.dtype.element_ty
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = m < M, n < N
    kk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + m.to(tl.int64)[:, None] * K
    w_cols = w_ptr + n.to(tl.int64)[None, :] * K  # the weight's rows, read as the columns of a [K, N] tile
    wait_for_previous(PDL)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_ok = k + kk < K
        h = tl.load(x_rows + k + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_ok = k_ok[:, None] & n_ok[None, :]
        w = tl.load(w_cols + k + kk[:, None], mask=w_ok, other=0.0)
        if IEEE:
            acc = tl.dot(h.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(h, w, acc)
        if GATED:
            w_up = tl.load(w_cols + N * K + k + kk[:, None], mask=w_ok, other=0.0)
            if IEEE:
                acc_up = tl.dot(h.to(tl.float32), w_up.to(tl.float32), acc_up, input_precision="ieee")
            else:
                acc_up = tl.dot(h, w_up, acc_up)

    if BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = round_to(acc, dtype).to(tl.float32)
    if GATED:  # silu rounded to the activation dtype before the product, as the eager ops round
        silu = round_to(y / (1.0 + tl.exp(-y)), dtype).to(tl.float32)
        y = round_to(silu * round_to(acc_up, dtype).to(tl.float32), dtype).to(tl.float32)
    at = m.to(tl.int64)[:, None] * N + n[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    if RESIDUAL:
        y += tl.load(res_ptr + at, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + at, round_to(y, dtype), mask=ok)


# Shared memory a tile program keeps beside its pipelined loads (the epilogue's layout change, at most a
# [64, 64] float32 block, and Triton's own scratch).
TILE_SCRATCH_BYTES = 16384


def tile_config(rows: int, n: int, k: int, gated: bool, element_size: int = 2,
                shared_memory: int = 232448) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for a product of 3..TILE_ROWS_MAX rows: row blocks
    of up to 64, and output blocks narrow enough that the products of a layer (1024 outputs and up) spread
    over every SM. Each pipeline stage holds a row tile and one weight tile (two when gated); the stages
    are cut, and then the K step, until they fit the GPU's `shared_memory` per program (232448 bytes on
    Hopper, 167936 on an A100, about 100 KB on smaller GPUs)."""
    block_m = min(64, max(16, next_power_of_2(rows)))
    if interpreted():
        return block_m, 64, next_power_of_2(k), 4, 1
    # The fastest measured on an H100 in bf16 (bench/kernel_probe.py --parts tiles). One row block (up to 64
    # rows: the frame's batches, a 64-position prefill): 16 outputs a program up to 2048 wide, else 32. Two
    # (65-128 rows: a prefill of up to 128 positions, a frame past 64 rows): about 128 programs, n / 64
    # outputs each up to 2048 wide, else 64 with a shorter K step. There the one-block choice took 92.6 us
    # for the 1.7B talker layer's four products against 62.6 us (cuBLAS with the norm, gate and add
    # kernels: 62.8; 2026-12-07d).
    if rows <= 64:
        block_n, block_k, stages = (16, 256, 4) if n <= 2048 else (32, 256, 3)
    elif n <= 2048:
        block_n, block_k, stages = max(16, n // 64), 256, 4
    else:
        block_n, block_k, stages = 64, 64 if gated else 128, 4
    if element_size > 2:  # float32 operands: a quarter of the K step, about the bytes of a bf16 stage
        block_k = 64
    room = shared_memory - TILE_SCRATCH_BYTES
    tiles = block_m + (2 if gated else 1) * block_n

    def stage_bytes() -> int:
        return tiles * block_k * element_size

    while block_k > 32 and 2 * stage_bytes() > room:  # room for at least two stages
        block_k //= 2
    return block_m, block_n, block_k, 4, max(1, min(stages, room // stage_bytes()))


def bf16_tensor_cores(device: torch.device) -> bool:
    """Whether the tile kernel's products compile here: Ampere (compute capability 8) or later, or the
    interpreter."""
    return device.type != "cuda" or _compute_capability(device.index or 0) >= (8, 0)


@functools.cache
def _compute_capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


@functools.cache
def shared_memory_bytes(device_index: int) -> int:
    """The most shared memory one program may use on this GPU, as Triton checks it at launch."""
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def fused_linear_triton(
    x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
    residual: torch.Tensor | None = None, gated: bool = False, bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None, pdl: bool = False, config: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """`fused_linear_reference`: in one launch up to `ROWS_PER_PROGRAM_MAX` rows (a program per row), up to
    `TILE_ROWS_MAX` in tiles behind the norm kernel (on GPUs with bf16 tensor cores); more rows go to
    cuBLAS between the Triton norm and gate. `out` may be `residual` itself (each program reads its own
    residual elements before it writes them). `config` overrides `linear_config` or `tile_config` (the
    probe sweeps it)."""
    k = x.shape[-1]
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    if (weight.shape[1] != k or (gated and weight.shape[0] % 2) or (gated and residual is not None)
            or (gated and bias is not None)):
        raise InputError(f"fused_linear: x [..., {k}] and weight {tuple(weight.shape)} (gated={gated}, "
                         f"residual={residual is not None}, bias={bias is not None}) do not fit")
    x2 = x.reshape(-1, k).contiguous()
    rows = x2.shape[0]
    shape = (*x.shape[:-1], n)
    for name, t in (("residual", residual), ("out", out)):
        if t is not None and (t.shape != shape or not t.is_contiguous()):
            raise InputError(f"{name} {tuple(t.shape)} must be contiguous and shaped like the output {shape}")
    weight = weight.contiguous()
    if rows > ROWS_PER_PROGRAM_MAX:  # a batch: the norm in its own kernel, then tiles or cuBLAS
        h = add_rms_norm_triton(x2, norm_weight, eps)[0] if norm_weight is not None else x2
        if not (rows <= TILE_ROWS_MAX and bf16_tensor_cores(x.device)):
            y = F.linear(h, weight, bias)
            y = (silu_mul_halves_triton(y) if gated else y).view(shape)
            y = y if residual is None else residual + y
            return y if out is None else out.copy_(y)
        out = x.new_empty(shape) if out is None else out
        shared_memory = shared_memory_bytes(x.device.index or 0) if x.is_cuda else 0
        block_m, block_n, block_k, warps, stages = config or tile_config(
            rows, n, k, gated, x.element_size(), shared_memory)
        _fused_linear_tile_kernel[(cdiv(n, block_n), cdiv(rows, block_m))](
            h, weight, residual if residual is not None else out, bias if bias is not None else weight, out,
            rows, k, n, GATED=gated, RESIDUAL=residual is not None, BIAS=bias is not None,
            IEEE=x.dtype == torch.float32 or interpreted(), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            PDL=pdl, num_warps=warps, num_stages=stages, **pdl_launch(pdl),
        )
        return out
    out = x.new_empty(shape) if out is None else out
    block_n, block_k, warps = config or linear_config(rows, n, k, gated)
    norm = norm_weight is not None
    if cdiv(n, block_n) > GRID_Y_MAX:
        raise InputError(f"{n} outputs in blocks of {block_n} exceed the launch grid's {GRID_Y_MAX} blocks")
    _fused_linear_kernel[(rows, cdiv(n, block_n))](
        x2, weight, norm_weight if norm else weight,  # (a pointer the kernel does not read)
        residual if residual is not None else out, bias if bias is not None else weight, out, k, n, eps,
        NORM=norm, GATED=gated, RESIDUAL=residual is not None, BIAS=bias is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, ONE_STEP=k <= block_k, PDL=pdl, num_warps=warps,
        **pdl_launch(pdl),
    )
    return out


def fused_linear(
    x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
    residual: torch.Tensor | None = None, gated: bool = False, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    impl = fused_linear_triton if enabled(x.device) else fused_linear_reference
    return impl(x, weight, norm_weight=norm_weight, eps=eps, residual=residual, gated=gated, bias=bias)
