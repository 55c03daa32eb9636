"""Building blocks shared by the talker, the code predictor and the codec transformers.

Numerics follow the official model where it matters for bit-exact comparison: RMSNorm computes in
float32 and casts back before the weight multiply; RoPE tables are computed in float32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_inverse_frequencies(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/head_dim), float32, as transformers' default RoPE init."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos/sin tables [..., seq, head_dim] for integer `positions` [..., seq], computed in float32."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [batch, heads, seq, head_dim] by tables [batch, seq, head_dim]."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


class LayerScale(nn.Module):
    """`*_layer_scale.scale`: a learned per-channel gain on a residual branch (the codec transformers)."""

    def __init__(self, dim: int, initial: float, device=None, dtype=None):
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), initial, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class SwiGLU(nn.Module):
    """`mlp.{gate,up,down}_proj`: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False, device=device, dtype=dtype)
        self.up_proj = nn.Linear(dim, hidden, bias=False, device=device, dtype=dtype)
        self.down_proj = nn.Linear(hidden, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class KVCache(nn.Module):
    """Static key/value cache `[batch, kv_heads, max_len, head_dim]`, written by slot index.

    Shapes never change after allocation, so a step that writes into it can be graph-captured. Slots are
    cache positions, not RoPE positions: with left padding every row writes the same slot, while its RoPE
    position skips its padding.
    """

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (batch, kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write `k`, `v` [batch, kv_heads, seq, head_dim] at `slots` [seq]; return the whole cache."""
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v


class Attention(nn.Module):
    """Qwen3 grouped-query self-attention with per-head QK RMSNorm before RoPE; no biases.

    Weight names (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `q_norm`, `k_norm`) are the checkpoint's.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float,
                 device=None, dtype=None):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False, device=device, dtype=dtype)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False, device=device, dtype=dtype)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=False, device=device, dtype=dtype)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False, device=device, dtype=dtype)
        self.q_norm = RMSNorm(head_dim, eps, device=device, dtype=dtype)
        self.k_norm = RMSNorm(head_dim, eps, device=device, dtype=dtype)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """x [batch, seq, hidden]; cos/sin [batch, seq, head_dim]; slots [seq]; bool mask [batch, 1, seq, L]
        over the first L <= max_len cache slots."""
        batch, seq, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is None:
            raise RuntimeError("attention has no KV cache: call setup_caches() on the model first")
        k, v = self.kv_cache.update(slots, k, v)
        # A mask shorter than the cache limits attention to its leading slots (a view: no copy, no sync),
        # so a caller that knows how far the cache is filled does not pay for the empty rest.
        k, v = k[:, :, : mask.shape[-1]], v[:, :, : mask.shape[-1]]
        # Repeat kv heads explicitly: SDPA's enable_gqa takes a path ~100x slower on CPU.
        groups = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class DecoderLayer(nn.Module):
    """Pre-norm Qwen3 block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_heads: int, num_kv_heads: int,
                 head_dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads, num_kv_heads, head_dim, eps, device, dtype)
        self.mlp = SwiGLU(hidden_size, intermediate_size, device=device, dtype=dtype)
        self.input_layernorm = RMSNorm(hidden_size, eps, device=device, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps, device=device, dtype=dtype)

    def forward(self, x, cos, sin, slots, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, slots, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """Layers + final norm with one rope table; owns the static KV caches of its layers."""

    def __init__(self, num_layers: int, hidden_size: int, intermediate_size: int, num_heads: int,
                 num_kv_heads: int, head_dim: int, eps: float, rope_theta: float, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim, eps, device, dtype)
            for _ in range(num_layers)
        )
        self.norm = RMSNorm(hidden_size, eps, device=device, dtype=dtype)
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.register_buffer("inv_freq", rope_inverse_frequencies(head_dim, rope_theta, device), persistent=False)

    def setup_caches(self, batch: int, max_len: int, device=None, dtype=None) -> None:
        """Allocate (or replace) one static KV cache per layer."""
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(batch, self.num_kv_heads, max_len, self.head_dim, device, dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """x [batch, seq, hidden]; RoPE `positions` [batch, seq]; cache `slots` [seq]; bool `mask`
        [batch, 1, seq, L] over the first L <= max_len cache slots (True = may attend). Returns the
        final-norm hidden states."""
        cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, slots, mask)
        return self.norm(x)


def attention_mask(valid_slots: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Causal mask [batch, 1, seq, max_len] from `valid_slots` [batch, max_len] (False = left padding or
    never written) and the query `slots` [seq]: a query attends to valid slots at or before its own."""
    max_len = valid_slots.shape[-1]
    causal = torch.arange(max_len, device=slots.device)[None, :] <= slots[:, None]
    return (valid_slots[:, None, None, :] & causal[None, None, :, :])
