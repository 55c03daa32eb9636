"""Counter-based random streams: Exp(1) noise for the exponential-trick draw, a pure function of
(request seed, draw counter, vocabulary index).

No generator state lives on the host or the device, so a captured CUDA graph replays fresh noise every
frame (the counter is a device tensor the graph advances), and a request's draws do not depend on which
other requests share its batch.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (the 'lowbias32' mixer) on int64 tensors holding values below 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def exponential_noise(seeds: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) samples [batch, vocab] for request `seeds` [batch] (int64) at draw `counter` (int64 tensor,
    0-d or [batch]). Uniforms have 24 bits, strictly inside (0, 1), so the log is finite."""
    stream = _mix32((seeds & _MASK32) ^ 0x9E3779B9)
    stream = _mix32((stream + (counter & _MASK32)) & _MASK32)
    index = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    bits = _mix32((stream[:, None] ^ _mix32(index)[None, :]) & _MASK32)
    uniform = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(uniform)
