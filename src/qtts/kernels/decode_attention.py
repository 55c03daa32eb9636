"""Attention of a few new query tokens over a static KV cache: the decode step of the talker and every
step of the code predictor (whose cache holds at most 16 positions).

Each sequence's valid cache range lives on the device (`starts`, `lengths`: left padding at the front,
new rows at the end), so one captured graph serves every step.

One program serves all the query heads that share a KV head, so each cached row is read once. Both
products run on tensor cores (`tl.dot`; the query heads of a group padded to 16 rows), accumulating in
float32; scores and probabilities stay in float32, as SDPA/flash kernels keep them. A bfloat16 cache
multiplies the probabilities as two bfloat16 parts (the rounded value and its remainder), so they keep
about 16 bits, not bfloat16's 8; a float32 cache multiplies in full float32, and so does Triton's
interpreter, whose bfloat16 `tl.dot` is wrong. (The earlier form multiplied on CUDA cores with every
operand in float32 registers, and spent 37 % of a 64-row 1.7B frame here: H100 profile, 2026-12-06.)

Long caches are split across programs (flash-decoding): each split keeps its own running max,
denominator and sum, and a second small kernel merges them, so a long context costs parallel work rather
than one long serial loop.
"""

from __future__ import annotations

import torch

from qtts.errors import InputError
from qtts.kernels import enabled, interpreted, jit, next_power_of_2, pdl_launch, round_to, tl, wait_for_previous


def decode_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float,
    starts: torch.Tensor | None = None, splits: int | None = None,
) -> torch.Tensor:
    """q [B, Hq, S, D]; caches [B, Hkv, L, D]; lengths [B] = cache rows in use, the S new ones included;
    starts [B] = first valid row (rows before it are left padding; default 0). `splits` is how the fused
    kernel divides a long cache; the result does not depend on it.

    Query s sits at row lengths - S + s and sees rows starts..itself. Returns [B, S, Hq * D].
    """
    batch, n_q_heads, seq_len, head_dim = q.shape
    group = n_q_heads // k_cache.shape[1]
    k = k_cache.repeat_interleave(group, dim=1).to(torch.float32)
    v = v_cache.repeat_interleave(group, dim=1).to(torch.float32)
    scores = (q.to(torch.float32) @ k.transpose(-1, -2)) * scale
    query_pos = lengths.to(q.device)[:, None] - seq_len + torch.arange(seq_len, device=q.device)
    rows = torch.arange(k.shape[2], device=q.device)
    visible = rows <= query_pos[..., None]
    if starts is not None:
        visible &= rows >= starts.to(q.device)[:, None, None]
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    # A query that sees no row (a left-padding position of a prefill) gets zeros, not NaN: NaN in its
    # cache rows would reach real queries as 0 * NaN in the probability-weighted sum.
    probs = torch.softmax(scores, dim=-1).masked_fill(~visible.any(-1)[:, None, :, None], 0.0)
    out = probs @ v
    return out.transpose(1, 2).reshape(batch, seq_len, n_q_heads * head_dim).to(q.dtype)


@jit
def _decode_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, starts_ptr, lengths_ptr, out_ptr, scale, seq_len, cache_len,
    partial_max_ptr, partial_sum_ptr, partial_acc_ptr,
    N_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    batch = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    step = tl.program_id(2) // SPLITS
    split = tl.program_id(2) % SPLITS
    first = tl.load(starts_ptr + batch).to(tl.int32)
    n_visible = tl.load(lengths_ptr + batch).to(tl.int32) - seq_len + step + 1
    if SPLITS > 1:  # this program's share of the visible rows, whole blocks each
        chunk = tl.cdiv(tl.cdiv(n_visible - first, SPLITS), BLOCK_N) * BLOCK_N
        first = first + split * chunk
        n_visible = tl.minimum(n_visible, first + chunk)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    in_dim = d < HEAD_DIM
    q_head = kv_head * GROUP + g
    q_rows = ((batch * (N_KV_HEADS * GROUP) + q_head) * seq_len + step) * HEAD_DIM
    q = tl.load(q_ptr + q_rows[:, None] + d[None, :], mask=(g < GROUP)[:, None] & in_dim[None, :], other=0.0)

    cache_base = (batch * N_KV_HEADS + kv_head) * cache_len * HEAD_DIM
    m = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    denom = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for start in range(first, n_visible, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        valid = rows < n_visible
        offs = cache_base + rows[:, None] * HEAD_DIM + d[None, :]
        k = tl.load(k_cache_ptr + offs, mask=valid[:, None] & in_dim[None, :], other=0.0)
        if IEEE:
            scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = tl.where(valid[None, :], scores * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        rescale = tl.exp(m - m_new)
        v = tl.load(v_cache_ptr + offs, mask=valid[:, None] & in_dim[None, :], other=0.0)
        if IEEE:
            weighted = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            p_high = p.to(v.dtype)
            p_low = (p - p_high.to(tl.float32)).to(v.dtype)
            weighted = tl.dot(p_high, v) + tl.dot(p_low, v)
        acc = acc * rescale[:, None] + weighted
        denom = denom * rescale + tl.sum(p, axis=1)
        m = m_new

    out_rows = (batch * seq_len + step) * (N_KV_HEADS * GROUP) + q_head
    store_mask = (g < GROUP)[:, None] & in_dim[None, :]
    if SPLITS == 1:
        denom = tl.where(denom > 0, denom, 1.0)  # a query that sees no row (left padding) gets zeros
        tl.store(out_ptr + out_rows[:, None] * HEAD_DIM + d[None, :],
                 round_to(acc / denom[:, None], out_ptr.dtype.element_ty), mask=store_mask)
    else:
        part = out_rows * SPLITS + split
        tl.store(partial_max_ptr + part, m, mask=g < GROUP)
        tl.store(partial_sum_ptr + part, denom, mask=g < GROUP)
        tl.store(partial_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=store_mask)


@jit
def _merge_splits_kernel(partial_max_ptr, partial_sum_ptr, partial_acc_ptr, out_ptr,
                         HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, SPLITS)
    d = tl.arange(0, HEAD_DIM)
    m = tl.load(partial_max_ptr + row * SPLITS + splits)
    top = tl.max(m, axis=0)
    top = tl.where(top == float("-inf"), 0.0, top)  # no split saw a row: all weights 0, output zeros
    weight = tl.exp(m - top)  # empty splits have m = -inf: weight 0
    denom = tl.sum(weight * tl.load(partial_sum_ptr + row * SPLITS + splits), axis=0)
    denom = tl.where(denom > 0, denom, 1.0)
    acc = tl.load(partial_acc_ptr + (row * SPLITS + splits)[:, None] * HEAD_DIM + d[None, :])
    out = tl.sum(weight[:, None] * acc, axis=0) / denom
    tl.store(out_ptr + row * HEAD_DIM + d, round_to(out, out_ptr.dtype.element_ty))


def default_splits(cache_len: int) -> int:
    """Programs per (row, KV head): about one per 64 cache rows, at most 16, so each walks at most a few
    blocks of rows (the loop is latency-bound; a second merge launch is cheaper than a longer walk)."""
    return min(16, next_power_of_2(-(-cache_len // 64)))


def decode_attention_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float,
    starts: torch.Tensor | None = None, splits: int | None = None, pdl: bool = False,
) -> torch.Tensor:
    batch, n_q_heads, seq_len, head_dim = q.shape
    n_kv_heads, cache_len = k_cache.shape[1], k_cache.shape[2]
    if n_q_heads % n_kv_heads or head_dim & (head_dim - 1):
        raise InputError(f"need query heads ({n_q_heads}) a multiple of KV heads ({n_kv_heads}) and a "
                         f"power-of-two head_dim ({head_dim})")
    if not (q.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise InputError("decode attention wants contiguous q [B, Hq, S, D] and caches [B, Hkv, L, D]")
    group = n_q_heads // n_kv_heads
    if starts is None:
        starts = torch.zeros_like(lengths)
    splits = default_splits(cache_len) if splits is None else splits
    if splits & (splits - 1):
        raise InputError(f"splits must be a power of two, got {splits}")
    out = torch.empty(batch, seq_len, n_q_heads * head_dim, device=q.device, dtype=q.dtype)
    rows = batch * seq_len * n_q_heads
    partial_max = torch.empty(rows * splits if splits > 1 else 1, device=q.device, dtype=torch.float32)
    partial_sum = torch.empty_like(partial_max)
    partial_acc = torch.empty(partial_max.numel(), head_dim, device=q.device, dtype=torch.float32)
    _decode_attention_kernel[(batch, n_kv_heads, seq_len * splits)](
        q, k_cache, v_cache, starts, lengths, out, scale, seq_len, cache_len, partial_max, partial_sum, partial_acc,
        N_KV_HEADS=n_kv_heads, GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_D=max(16, head_dim), BLOCK_N=max(16, min(32, next_power_of_2(cache_len))), SPLITS=splits,
        IEEE=q.dtype == torch.float32 or interpreted(), PDL=pdl, num_warps=4, **pdl_launch(pdl),
    )
    if splits > 1:
        _merge_splits_kernel[(rows,)](partial_max, partial_sum, partial_acc, out, HEAD_DIM=head_dim,
                                      SPLITS=splits, PDL=pdl, num_warps=4, **pdl_launch(pdl))
    return out


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float,
    starts: torch.Tensor | None = None, splits: int | None = None,
) -> torch.Tensor:
    impl = decode_attention_triton if enabled(q.device) else decode_attention_reference
    return impl(q, k_cache, v_cache, lengths, scale, starts, splits)
