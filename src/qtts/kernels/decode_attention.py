"""Attention of a few new query tokens over a static KV cache: the decode step of the talker and every
step of the code predictor (whose cache holds at most 16 positions).

Each sequence's valid cache range lives on the device (`starts`, `lengths`: left padding at the front,
new rows at the end), so one captured graph serves every step.
Scores and probabilities stay in float32 (as SDPA/flash kernels keep them) and one program serves all the
query heads that share a KV head, so each cached row is read once.
"""

from __future__ import annotations

import torch

from qtts.errors import InputError
from qtts.kernels import enabled, jit, next_power_of_2, round_to, tl


def decode_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, Hq, S, D]; caches [B, Hkv, L, D]; lengths [B] = cache rows in use, the S new ones included;
    starts [B] = first valid row (rows before it are left padding; default 0).

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
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(batch, seq_len, n_q_heads * head_dim).to(q.dtype)


@jit
def _decode_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, starts_ptr, lengths_ptr, out_ptr, scale, seq_len, cache_len,
    N_KV_HEADS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    step = tl.program_id(2)
    first = tl.load(starts_ptr + batch).to(tl.int32)
    n_visible = tl.load(lengths_ptr + batch).to(tl.int32) - seq_len + step + 1

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, HEAD_DIM)
    q_head = kv_head * GROUP + g
    q_rows = ((batch * (N_KV_HEADS * GROUP) + q_head) * seq_len + step) * HEAD_DIM
    q = tl.load(q_ptr + q_rows[:, None] + d[None, :], mask=(g < GROUP)[:, None], other=0.0).to(tl.float32)

    cache_base = (batch * N_KV_HEADS + kv_head) * cache_len * HEAD_DIM
    m = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    denom = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    for start in range(first, n_visible, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        valid = rows < n_visible
        offs = cache_base + rows[:, None] * HEAD_DIM + d[None, :]
        k = tl.load(k_cache_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        rescale = tl.exp(m - m_new)
        v = tl.load(v_cache_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
        acc = acc * rescale[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        denom = denom * rescale + tl.sum(p, axis=1)
        m = m_new

    out_rows = ((batch * seq_len + step) * (N_KV_HEADS * GROUP) + q_head) * HEAD_DIM
    out = acc / denom[:, None]
    tl.store(out_ptr + out_rows[:, None] + d[None, :], round_to(out, out_ptr.dtype.element_ty),
             mask=(g < GROUP)[:, None])


def decode_attention_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float,
    starts: torch.Tensor | None = None,
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
    out = torch.empty(batch, seq_len, n_q_heads * head_dim, device=q.device, dtype=q.dtype)
    _decode_attention_kernel[(batch, n_kv_heads, seq_len)](
        q, k_cache, v_cache, starts, lengths, out, scale, seq_len, cache_len,
        N_KV_HEADS=n_kv_heads, GROUP=group, BLOCK_G=next_power_of_2(group), HEAD_DIM=head_dim,
        BLOCK_N=min(32, next_power_of_2(cache_len)), num_warps=4,
    )
    return out


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lengths: torch.Tensor, scale: float,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    impl = decode_attention_triton if enabled(q.device) else decode_attention_reference
    return impl(q, k_cache, v_cache, lengths, scale, starts)
