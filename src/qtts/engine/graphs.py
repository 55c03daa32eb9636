"""Capture a `Frame`'s step as one CUDA graph: replaying it is the frame, with no launch or host cost per
kernel. Optionally the step is first compiled with torch.compile (Inductor fuses the glue ops), then
captured the same way; on torch 2.11 that did not yet work with the Triton kernels (Inductor failed
recompiling them) and took over 5 minutes without them, so the fused eager step is the default.
"""

from __future__ import annotations

import time

import torch

from ..errors import QttsError
from .frame import Frame


class FrameGraph:
    """One CUDA graph of `frame.step` for the frame's batch bucket.

    Capture runs the step a few times first (Triton compiles, cuBLAS picks its kernels, Inductor compiles),
    which advances the frame's state: capture before `frame.start` loads a real batch."""

    def __init__(self, frame: Frame, *, compile: bool = False, warmup: int = 3):
        if not frame.hidden.is_cuda:
            raise QttsError("CUDA graphs need the talker on a CUDA device; run frame.step() eagerly instead")
        self.frame = frame
        step = torch.compile(frame.step, fullgraph=False) if compile else frame.step
        began = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.warmup_s = time.perf_counter() - began
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            step()
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - began - self.warmup_s

    def __call__(self) -> None:
        self.graph.replay()
