"""Capture a `Frame`'s step per batch bucket, and the prefill per arrival count and prompt length, as CUDA
graphs: replaying one is the whole step (a frame's is two, one per half), with no launch or host cost per
kernel. (torch.compile before capture was tried on torch 2.11: Inductor failed recompiling the Triton
kernels, and took over 5 minutes without them, so the fused eager step is captured.)
"""

from __future__ import annotations

import time

import torch

from ..errors import QttsError
from .frame import Frame, prefill
from .rows import RowStore


def capture(fn, *, warmup: int, stream: torch.cuda.Stream, pool=None):
    """A CUDA graph of `fn()` and what `fn` returned while recorded (the replays' output), after `warmup`
    eager runs (Triton compiles, cuBLAS picks its kernels). Warm-up and capture run on `stream`, the stream
    the graph will be replayed on: PyTorch keys cuBLAS's scratch workspace by stream, and a graph keeps the
    workspace address it was captured with, so graphs captured on one stream and replayed at the same time
    on others (frames beside the decode lanes) would share one workspace. `pool` shares a memory pool with
    other graphs that are never replayed concurrently."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream), torch.no_grad():
        output = fn()
    torch.cuda.synchronize()
    return graph, output


class FrameGraph:
    """A `Frame`'s step for its batch bucket as two CUDA graphs, one per half (`Frame.draw_codes`,
    `Frame.advance`): the engine copies the codes out between them.

    Capture runs the step a few times first, which advances the rows' state: capture before any request
    is loaded."""

    def __init__(self, frame: Frame, *, stream: torch.cuda.Stream, warmup: int = 3, pool=None):
        if not frame.hidden.is_cuda:
            raise QttsError("CUDA graphs need the talker on a CUDA device; run frame.step() eagerly instead")
        self.frame = frame
        began = time.perf_counter()
        self.codes_graph, _ = capture(frame.draw_codes, warmup=warmup, stream=stream, pool=pool)
        self.advance_graph, _ = capture(frame.advance, warmup=warmup, stream=stream, pool=pool)
        self.capture_s = time.perf_counter() - began

    def draw_codes(self) -> None:
        self.codes_graph.replay()

    def advance(self) -> None:
        self.advance_graph.replay()

    def step(self) -> None:
        self.draw_codes()
        self.advance()


class PrefillGraph:
    """One CUDA graph of `prefill` for `count` prompts of exactly `length` tokens (callers left-pad to it)
    into the store's first `count` staging rows.

    Capturing runs the prefill on zeros, which overwrites those staging rows: capture before any request."""

    def __init__(self, talker, ops, store: RowStore, count: int, length: int, *, stream: torch.cuda.Stream,
                 pool=None):
        hidden = store.hidden
        self.embeds = torch.zeros(count, length, hidden.shape[1], device=hidden.device, dtype=hidden.dtype)
        self.valid = torch.ones(count, length, device=hidden.device, dtype=torch.bool)
        rows = store.staging_rows(count)
        self.graph, _ = capture(lambda: prefill(talker, ops, store, rows, self.embeds, self.valid), warmup=1,
                                stream=stream, pool=pool)

    def __call__(self) -> None:
        """Run the prefill on what `embeds` and `valid` hold now (callers write their prompts into them)."""
        self.graph.replay()
