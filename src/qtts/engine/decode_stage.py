"""The streaming codec decoder of every running request at once.

Each request owns a decoder slot: one row of a pooled `CodecStream` state (conv tails, transposed-conv
overlaps, the attention window). A decode call takes the requests whose next chunk has the same size, gathers
their rows into a scratch stream of the smallest batch bucket that holds them, decodes, and scatters the
rows back; on CUDA the gather, decode and scatter of each (bucket, chunk size) are one captured graph.
`DecodeCursor` turns a request's frames into chunk-sized pieces exactly as `streaming.OfficialWindowStream`
decodes them (the official 300/25 windows, ICL context decoded silently), so the audio equals the
non-streamed decode of the same codes.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass

import torch

from ..models.codec_decoder import CodecDecoder
from ..models.codec_stream import CodecStream
from ..streaming import CHUNK_RAMP, OFFICIAL_CONTEXT, OFFICIAL_WINDOW
from .graphs import capture

CHUNK_SIZES = (1, 2, 4, 8, 16)


def bucket_for(count: int, buckets: tuple[int, ...]) -> int:
    return next(b for b in buckets if b >= count)


class _ChunkRun:
    """Gather rows `index` of the pool into `scratch`, decode `codes` there, scatter the rows back."""

    def __init__(self, pool: CodecStream, scratch: CodecStream, frames: int, dummy: int):
        device = next(pool.decoder.parameters()).device
        self.pool, self.scratch = pool, scratch
        self.index = torch.full((scratch.batch_size,), dummy, dtype=torch.long, device=device)
        self.codes = torch.zeros(scratch.batch_size, frames, pool.decoder.config.num_quantizers,
                                 dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.audio: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.audio
        return self.run()

    def run(self) -> torch.Tensor:
        for whole, rows in zip(self.pool.state_tensors(), self.scratch.state_tensors()):
            torch.index_select(whole, 0, self.index, out=rows)
        audio = self.scratch.decode(self.codes)
        for whole, rows in zip(self.pool.state_tensors(), self.scratch.state_tensors()):
            whole.index_copy_(0, self.index, rows)
        return audio


class DecodeStage:
    """Decoder slots for up to `slots` requests, decoded together per chunk size."""

    def __init__(self, decoder: CodecDecoder, slots: int, buckets: tuple[int, ...], graphs: bool):
        device = next(decoder.parameters()).device
        # Its own CUDA stream: a chunk decodes while the next frames run, instead of queueing behind them.
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.decoder = decoder
        self.samples_per_frame = decoder.samples_per_frame
        self.buckets = tuple(b for b in buckets if b < slots) + (max(slots, buckets[0]),)
        self.dummy = slots
        self.pool = CodecStream(decoder, batch_size=slots + 1)  # the last row: padding rows' scratch
        self.free = list(range(slots))
        scratch = {b: CodecStream(decoder, batch_size=b) for b in self.buckets}
        self.runs = {(b, c): _ChunkRun(self.pool, scratch[b], c, dummy=slots)
                     for b in self.buckets for c in CHUNK_SIZES}
        if graphs:
            # One pool for every graph: they replay one after another on one stream. The index points at
            # the padding row, so warm-up and capture touch no request's state.
            pool = torch.cuda.graph_pool_handle()
            for run in self.runs.values():
                run.graph, run.audio = capture(run.run, warmup=1, pool=pool)

    def on_stream(self):
        """Run every use of the stage (resets, decodes, reading their audio) inside this: on CUDA its stream."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def acquire(self) -> int:
        """A free decoder slot, its state zeroed: a new utterance."""
        slot = self.free.pop()
        self.pool.reset([slot])
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def reset(self, slot: int) -> None:
        self.pool.reset([slot])

    def decode(self, slots: list[int], codes: torch.Tensor) -> torch.Tensor:
        """Decode codes [m, c, 16] (host memory) of decoder `slots` (m of them; c one of CHUNK_SIZES).
        Returns their audio [m, c * samples_per_frame] on the device, overwritten by the next call."""
        count, frames = codes.shape[:2]
        run = self.runs[(bucket_for(count, self.buckets), frames)]
        run.index.fill_(self.dummy)
        run.index[:count].copy_(torch.tensor(slots), non_blocking=True)
        run.codes[:count].copy_(codes, non_blocking=True)
        return run()[:count]


@dataclass
class Piece:
    """The next frames [c, 16] of one request to decode; `keep`: whether their audio is the request's
    (False: decoder context, decoded only to set the state); `reset`: start a new window first."""

    codes: torch.Tensor
    keep: bool
    reset: bool = False


class DecodeCursor:
    """A request's frames cut into decode pieces of captured chunk sizes: the ICL context first (silent),
    then a ramp of 1, 2, 4, 8, 16 frames so that first audio leaves after one frame, and at every
    official window start (each 300 frames) a reset with the last 25 frames replayed silently."""

    def __init__(self, context: torch.Tensor | None, ramp: tuple[int, ...] = CHUNK_RAMP):
        self.ramp = ramp
        self.chunks = 0  # kept chunks cut so far: the position on the ramp
        self.seen = 0  # frames cut into pieces so far, context included (the official windows count it)
        self.history: torch.Tensor | None = None  # the last OFFICIAL_CONTEXT frames, for window restarts
        self.pending: list[torch.Tensor] = []  # frames [16] not cut yet
        self.pieces: deque[Piece] = deque()
        if context is not None and context.shape[0]:
            self._cut(context.cpu(), keep=False)

    def add(self, frame: torch.Tensor) -> None:
        self.pending.append(frame)

    def cut(self, final: bool) -> None:
        """Cut the pending frames that fill the next ramp chunk (all of them when `final`)."""
        while self.pending:
            size = self.ramp[min(self.chunks, len(self.ramp) - 1)]
            if len(self.pending) < size and not final:
                return
            take, self.pending = self.pending[:size], self.pending[size:]
            self._cut(torch.stack(take), keep=True)
            self.chunks += 1

    def _cut(self, frames: torch.Tensor, keep: bool) -> None:
        while frames.shape[0]:
            offset = self.seen % OFFICIAL_WINDOW
            if offset == 0 and self.seen > 0:
                self._split(self.history, keep=False, reset=True)
            take = min(frames.shape[0], OFFICIAL_WINDOW - offset)
            part, frames = frames[:take], frames[take:]
            self._split(part, keep)
            recent = part if self.history is None else torch.cat([self.history, part])
            self.history = recent[-OFFICIAL_CONTEXT:]
            self.seen += take

    def _split(self, frames: torch.Tensor, keep: bool, reset: bool = False) -> None:
        """Greedily into captured sizes (25 = 16 + 8 + 1): a stateful decoder gives the same audio."""
        start = 0
        while start < frames.shape[0]:
            size = max(c for c in CHUNK_SIZES if c <= frames.shape[0] - start)
            self.pieces.append(Piece(frames[start: start + size], keep, reset and start == 0))
            start += size
