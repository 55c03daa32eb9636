"""RoPE prep probe: microseconds per launch of the fused q/k norm + RoPE + cache write kernel
(`kernels/qk_norm_rope.py`) for each number of heads a program takes, at 1 to 256 tokens, with the
talker's head layout (16 query and 8 key/value heads of 128), bf16; each launch timed as one of 20 in a CUDA
graph (median replay), with its max |difference| from the reference (0 expected; the 128- and
256-token rows write random, repeating positions, so which token's key a cache row keeps is arbitrary).
What `heads_per_program` is chosen from.

    python bench/rope_probe.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "src"))

from kernel_probe import graph_ms  # noqa: E402
from qtts.kernels.qk_norm_rope import qk_norm_rope_cache_reference, qk_norm_rope_cache_triton  # noqa: E402
from qtts.models.layers import rope_inverse_frequencies  # noqa: E402

Q_HEADS, KV_HEADS, HEAD_DIM, CACHE_LEN = 16, 8, 128, 4096


def launch_us(run, launches: int = 20) -> float:
    """Microseconds a launch, as one of `launches` in a CUDA graph (median replay)."""
    return graph_ms(lambda: [run() for _ in range(launches)]) / launches * 1e3


def main():
    device, dtype = "cuda", torch.bfloat16
    for tokens in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        batch, seq = (tokens, 1) if tokens <= 64 else (1, tokens)  # a batch of one-token rows, or a prefill
        qkv = torch.randn(batch, seq, (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM, device=device).to(dtype)
        q, k, v = (t.unflatten(-1, (-1, HEAD_DIM)) for t in
                   qkv.split([Q_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1))
        q_weight, k_weight = ((1 + 0.3 * torch.randn(HEAD_DIM, device=device)).to(dtype) for _ in range(2))
        inv_freq = rope_inverse_frequencies(HEAD_DIM, 1e6, device=device)
        positions = torch.randint(0, 3000, (batch, seq), device=device)
        caches = [torch.zeros(batch, KV_HEADS, CACHE_LEN, HEAD_DIM, device=device, dtype=dtype) for _ in range(4)]
        ref = qk_norm_rope_cache_reference(q, k, v, q_weight, k_weight, 1e-6, inv_freq, positions, *caches[2:])
        row = {}
        for heads in (1, 2, 4, 8, 16):
            def run(heads=heads):
                return qk_norm_rope_cache_triton(q, k, v, q_weight, k_weight, 1e-6, inv_freq, positions, *caches[:2],
                                                 heads=heads)

            diff = max((run().float() - ref.float()).abs().max().item(),
                       (caches[0].float() - caches[2].float()).abs().max().item())
            row[heads] = {"us": round(launch_us(run), 2), "max_diff": diff}
        print(json.dumps({"tokens": tokens, "heads_per_program": row}), flush=True)


if __name__ == "__main__":
    main()
