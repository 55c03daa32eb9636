"""Attention input prep in one launch: per-head RMSNorm of q and k, RoPE on both, and the write of the new
k and v rows into a static KV cache at each token's cache index.

Numerics are the official ones in the activation dtype: norm variance in float32, RoPE tables computed in
float32 from the positions and rounded to the activation dtype, and each product and sum of the rotation
rounded as the eager PyTorch ops round them.
"""

from __future__ import annotations

import torch

from qtts.errors import InputError
from qtts.kernels import cdiv, cos, enabled, jit, pdl_launch, round_to, sin, tl, use_libdevice, wait_for_previous
from qtts.models.layers import apply_rope, rope_cos_sin


def _head_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def qk_norm_rope_cache_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    eps: float, inv_freq: torch.Tensor, positions: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, cache_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, S, Hq, D], k/v [B, S, Hkv, D], positions and cache_index [B, S], caches [B, Hkv, L, D].

    Writes rotated k and plain v at `cache_index` (default: `positions`) and returns rotated q [B, Hq, S, D].
    """
    cos, sin = rope_cos_sin(positions, inv_freq, q.dtype)
    q = apply_rope(_head_rms_norm(q, q_weight, eps).transpose(1, 2), cos, sin)
    k = apply_rope(_head_rms_norm(k, k_weight, eps).transpose(1, 2), cos, sin)
    cache_index = positions if cache_index is None else cache_index
    batch = torch.arange(q.shape[0], device=q.device)[:, None].expand_as(cache_index)
    k_cache[batch, :, cache_index] = k.transpose(1, 2).to(k_cache.dtype)
    v_cache[batch, :, cache_index] = v.to(v_cache.dtype)
    return q.contiguous()


@jit
def _norm_rope(x_ptr, w_ptr, heads, live, cos_a, sin_a, eps, half, HALF: tl.constexpr):
    """Rows of `heads` [BLOCK_H] heads of one token (those where `live`): RMSNorm over each head, weight,
    rotation. Returns the two rotated halves [BLOCK_H, HALF], rounded to the activation dtype."""
    dtype = x_ptr.dtype.element_ty
    offs = heads[:, None] * (2 * HALF) + half[None, :]
    x1 = tl.load(x_ptr + offs, mask=live[:, None], other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + HALF + offs, mask=live[:, None], other=0.0).to(tl.float32)
    inv_rms = tl.math.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF) + eps)[:, None]
    w1 = tl.load(w_ptr + half).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + HALF + half).to(tl.float32)[None, :]
    n1 = round_to(round_to(x1 * inv_rms, dtype).to(tl.float32) * w1, dtype).to(tl.float32)
    n2 = round_to(round_to(x2 * inv_rms, dtype).to(tl.float32) * w2, dtype).to(tl.float32)
    # rotate_half(x) = [-x2, x1]; each product and the sum round like the eager dtype ops
    o1 = round_to(n1 * cos_a, dtype).to(tl.float32) + round_to(-n2 * sin_a, dtype).to(tl.float32)
    o2 = round_to(n2 * cos_a, dtype).to(tl.float32) + round_to(n1 * sin_a, dtype).to(tl.float32)
    return round_to(o1, dtype), round_to(o2, dtype)


@jit
def _qk_norm_rope_cache_kernel(
    q_ptr, k_ptr, v_ptr, q_weight_ptr, k_weight_ptr, inv_freq_ptr, positions_ptr, cache_index_ptr,
    q_out_ptr, k_cache_ptr, v_cache_ptr,
    q_batch_stride, q_seq_stride, k_batch_stride, k_seq_stride, v_batch_stride, v_seq_stride,
    seq_len, cache_len, eps,
    N_Q_HEADS: tl.constexpr, N_KV_HEADS: tl.constexpr, HEADS: tl.constexpr, HALF: tl.constexpr,
    LIBDEVICE: tl.constexpr, PDL: tl.constexpr,
):
    """One program per (token, group of HEADS heads): query heads, or key heads with their cache writes (key
    and value). Groups never mix query and key heads."""
    wait_for_previous(PDL)
    token = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    batch = token // seq_len
    step = token % seq_len
    half = tl.arange(0, HALF)
    head_dim = 2 * HALF

    angle = (tl.load(positions_ptr + token).to(tl.float32) * tl.load(inv_freq_ptr + half))[None, :]
    dtype = q_out_ptr.dtype.element_ty
    cos_a = round_to(cos(angle, LIBDEVICE), dtype).to(tl.float32)
    sin_a = round_to(sin(angle, LIBDEVICE), dtype).to(tl.float32)

    q_groups = (N_Q_HEADS + HEADS - 1) // HEADS
    if group < q_groups:
        heads = group * HEADS + tl.arange(0, HEADS)
        live = heads < N_Q_HEADS
        q_row = q_ptr + batch * q_batch_stride + step * q_seq_stride
        o1, o2 = _norm_rope(q_row, q_weight_ptr, heads, live, cos_a, sin_a, eps, half, HALF)
        out = q_out_ptr + ((batch * N_Q_HEADS + heads[:, None]) * seq_len + step) * head_dim + half[None, :]
        tl.store(out, o1, mask=live[:, None])
        tl.store(out + HALF, o2, mask=live[:, None])
    else:
        heads = (group - q_groups) * HEADS + tl.arange(0, HEADS)
        live = heads < N_KV_HEADS
        k_row = k_ptr + batch * k_batch_stride + step * k_seq_stride
        o1, o2 = _norm_rope(k_row, k_weight_ptr, heads, live, cos_a, sin_a, eps, half, HALF)
        slot = tl.load(cache_index_ptr + token).to(tl.int64)
        rows = ((batch * N_KV_HEADS + heads[:, None]) * cache_len + slot) * head_dim + half[None, :]
        cache_dtype = k_cache_ptr.dtype.element_ty
        tl.store(k_cache_ptr + rows, o1.to(cache_dtype), mask=live[:, None])
        tl.store(k_cache_ptr + rows + HALF, o2.to(cache_dtype), mask=live[:, None])
        v = v_ptr + batch * v_batch_stride + step * v_seq_stride + heads[:, None] * head_dim + half[None, :]
        tl.store(v_cache_ptr + rows, tl.load(v, mask=live[:, None]).to(cache_dtype), mask=live[:, None])
        tl.store(v_cache_ptr + rows + HALF, tl.load(v + HALF, mask=live[:, None]).to(cache_dtype),
                 mask=live[:, None])


# Heads a program takes: four from two tokens on, one below (bench/rope_probe.py and engine_probe, H100,
# 1.7B: at 64 tokens 2.76 us a launch against 3.77 with one head; the 64-row frame 6.31 against 6.42 ms, a
# 256-token prefill 3.87-3.94 against 4.08 ms; eight heads made the 16- to 48-row frames slower).
HEADS_FROM_TOKENS, HEADS_MANY_TOKENS = 2, 4


def heads_per_program(tokens: int) -> int:
    """Heads one program normalises and rotates. With one token, one: a program's heads are serial work
    while the rest of the device idles. With more, a program per head recomputes the token's sin/cos per
    head and pays a program's start each."""
    return 1 if tokens < HEADS_FROM_TOKENS else HEADS_MANY_TOKENS


def _token_strides(x: torch.Tensor, name: str) -> tuple[int, int]:
    """Tokens may be strided (views of a fused projection); each token's heads must be packed."""
    if x.stride(3) != 1 or x.stride(2) != x.shape[3]:
        raise InputError(f"{name} must have packed heads [B, S, H, D] per token; got strides {x.stride()}")
    return x.stride(0), x.stride(1)


def qk_norm_rope_cache_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    eps: float, inv_freq: torch.Tensor, positions: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, cache_index: torch.Tensor | None = None, pdl: bool = False,
    heads: int | None = None,
) -> torch.Tensor:
    """`heads`: heads per program, a power of two (default: `heads_per_program` of the token count)."""
    batch, seq_len, n_q_heads, head_dim = q.shape
    n_kv_heads = k.shape[2]
    if head_dim & (head_dim - 1) or head_dim < 4:
        raise InputError(f"the fused RoPE kernel needs head_dim a power of two (>= 4), got {head_dim}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise InputError("KV caches must be contiguous [B, Hkv, L, D] tensors")
    cache_index = positions if cache_index is None else cache_index
    heads = heads_per_program(batch * seq_len) if heads is None else heads
    groups = cdiv(n_q_heads, heads) + cdiv(n_kv_heads, heads)
    q_out = torch.empty(batch, n_q_heads, seq_len, head_dim, device=q.device, dtype=q.dtype)
    _qk_norm_rope_cache_kernel[(batch * seq_len, groups)](
        q, k, v, q_weight, k_weight, inv_freq, positions.contiguous(), cache_index.contiguous(),
        q_out, k_cache, v_cache,
        *_token_strides(q, "q"), *_token_strides(k, "k"), *_token_strides(v, "v"), seq_len, k_cache.shape[2], eps,
        N_Q_HEADS=n_q_heads, N_KV_HEADS=n_kv_heads, HEADS=heads, HALF=head_dim // 2, LIBDEVICE=use_libdevice(),
        PDL=pdl, num_warps=4, **pdl_launch(pdl),
    )
    return q_out


def qk_norm_rope_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    eps: float, inv_freq: torch.Tensor, positions: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, cache_index: torch.Tensor | None = None,
) -> torch.Tensor:
    impl = qk_norm_rope_cache_triton if enabled(q.device) else qk_norm_rope_cache_reference
    return impl(q, k, v, q_weight, k_weight, eps, inv_freq, positions, k_cache, v_cache, cache_index)
