"""Capture a `Frame`'s step, and its prefill per prompt length, as CUDA graphs: replaying one is the whole
step, with no launch or host cost per kernel. Optionally the step is first compiled with torch.compile
(Inductor fuses the glue ops), then captured the same way; on torch 2.11 that did not yet work with the
Triton kernels (Inductor failed recompiling them) and took over 5 minutes without them, so the fused eager
step is the default.
"""

from __future__ import annotations

import time

import torch

from ..errors import QttsError
from .frame import Frame


def capture(fn, *, warmup: int, pool=None) -> torch.cuda.CUDAGraph:
    """A CUDA graph of `fn()`, after `warmup` eager runs on a side stream (Triton compiles, cuBLAS picks
    its kernels). `pool` shares a memory pool with other graphs that are never replayed concurrently."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool), torch.no_grad():
        fn()
    torch.cuda.synchronize()
    return graph


class FrameGraph:
    """One CUDA graph of `frame.step` for the frame's batch bucket.

    Capture runs the step a few times first, which advances the frame's state: capture before
    `frame.start` loads a real batch."""

    def __init__(self, frame: Frame, *, compile: bool = False, warmup: int = 3):
        if not frame.hidden.is_cuda:
            raise QttsError("CUDA graphs need the talker on a CUDA device; run frame.step() eagerly instead")
        self.frame = frame
        step = torch.compile(frame.step, fullgraph=False) if compile else frame.step
        began = time.perf_counter()
        self.graph = capture(step, warmup=warmup)
        self.capture_s = time.perf_counter() - began

    def __call__(self) -> None:
        self.graph.replay()


class PrefillGraph:
    """One CUDA graph of `frame.prefill` for prompts of exactly `length` tokens (callers left-pad to it).

    Capturing runs the prefill on zeros, which overwrites the frame's hidden state, logits and first cache
    rows: capture before loading a request. Graphs of one frame share `pool` (they run one at a time)."""

    def __init__(self, frame: Frame, length: int, pool=None):
        if not frame.hidden.is_cuda:
            raise QttsError("CUDA graphs need the talker on a CUDA device; run frame.prefill() eagerly instead")
        hidden = frame.talker.config.hidden_size
        self.embeds = torch.zeros(frame.batch, length, hidden, device=frame.hidden.device, dtype=frame.hidden.dtype)
        self.valid = torch.ones(frame.batch, length, device=frame.hidden.device, dtype=torch.bool)
        self.graph = capture(lambda: frame.prefill(self.embeds, self.valid), warmup=1, pool=pool)

    def __call__(self, embeds: torch.Tensor, valid: torch.Tensor) -> None:
        self.embeds.copy_(embeds)
        self.valid.copy_(valid)
        self.graph.replay()
