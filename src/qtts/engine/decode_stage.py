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


URGENT, BULK = "urgent", "bulk"  # the two decode lanes (see `DecodeStage`)
URGENT_BUCKET_MAX = 8  # an urgent call decodes at most this many requests (the arrivals of one prefill)


# CUDA stream priorities (lower runs sooner; torch maps them into the device's range): first audio before
# everything, frames before audio that is not needed yet.
URGENT_PRIORITY, FRAME_PRIORITY, BULK_PRIORITY = -2, -1, 0


class _Lane:
    """Decode calls on one CUDA stream: its own scratch states, and its graphs in one memory pool (a
    lane's graphs replay one after another; the two lanes' run concurrently)."""

    def __init__(self, pool: CodecStream, buckets: tuple[int, ...], dummy: int, graphs: bool, priority: int):
        decoder = pool.decoder
        device = next(decoder.parameters()).device
        self.stream = torch.cuda.Stream(device, priority=priority) if device.type == "cuda" else None
        self.buckets, self.dummy = buckets, dummy
        scratch = {b: CodecStream(decoder, batch_size=b) for b in buckets}
        self.runs = {(b, c): _ChunkRun(pool, scratch[b], c, dummy) for b in buckets for c in CHUNK_SIZES}
        if graphs:
            # The index points at the lane's padding row, so warm-up and capture touch no request's state.
            graph_pool = torch.cuda.graph_pool_handle()
            for run in self.runs.values():  # on the lane's stream, as they replay (see `capture`)
                run.graph, run.audio = capture(run.run, warmup=1, stream=self.stream, pool=graph_pool)

    def on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()


class DecodeStage:
    """Decoder slots for up to `slots` requests, decoded together per chunk size, in two lanes.

    The urgent lane (highest stream priority, up to 8 requests a call) decodes what stands between a
    request and its first audio and the ramp after it; the bulk lane (lowest priority, every bucket)
    decodes the steady chunks, which the scheduler lets gather while a stream's audio is well ahead of
    playback so that they decode many requests a call. A slot used on the other lane than last time waits
    for that use first, so each request's chunks decode in order."""

    def __init__(self, decoder: CodecDecoder, slots: int, buckets: tuple[int, ...], graphs: bool):
        self.decoder = decoder
        self.samples_per_frame = decoder.samples_per_frame
        self.buckets = tuple(b for b in buckets if b < slots) + (max(slots, buckets[0]),)
        urgent_buckets = tuple(b for b in self.buckets if b <= URGENT_BUCKET_MAX) or self.buckets[:1]
        # two more rows: each lane's padding rows gather from and scatter into their own
        self.pool = CodecStream(decoder, batch_size=slots + 2)
        self.free = list(range(slots))
        self.lanes = {URGENT: _Lane(self.pool, urgent_buckets, slots, graphs, URGENT_PRIORITY),
                      BULK: _Lane(self.pool, self.buckets, slots + 1, graphs, BULK_PRIORITY)}
        self._last_use: dict[int, tuple[str, torch.cuda.Event | None]] = {}  # slot -> (lane, event)

    def on_stream(self, lane: str):
        """Run every use of a lane (resets, decodes, reading their audio) inside this: on CUDA its stream."""
        return self.lanes[lane].on_stream()

    def max_count(self, lane: str) -> int:
        """The most requests one call of `lane` decodes."""
        return self.lanes[lane].buckets[-1]

    def acquire(self) -> int:
        """A free decoder slot, its state zeroed (on the urgent lane): a new utterance."""
        slot = self.free.pop()
        self.reset(slot, URGENT)
        return slot

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def reset(self, slot: int, lane: str) -> None:
        """Zero the state of `slot` on `lane` (call inside `on_stream(lane)`)."""
        self._follow([slot], lane)
        self.pool.reset([slot])
        self._used([slot], lane)

    def decode(self, lane: str, slots: list[int], codes: torch.Tensor) -> torch.Tensor:
        """Decode codes [m, c, 16] (host memory) of decoder `slots` (m of them, at most `max_count(lane)`;
        c one of CHUNK_SIZES) on `lane`, inside `on_stream(lane)`. Returns their audio
        [m, c * samples_per_frame] on the device, overwritten by the lane's next call."""
        count, frames = codes.shape[:2]
        lane_runs = self.lanes[lane]
        run = lane_runs.runs[(bucket_for(count, lane_runs.buckets), frames)]
        self._follow(slots, lane)
        cuda = run.index.is_cuda
        index = torch.tensor(slots)
        if cuda:  # pinned, so the copies queue on the lane instead of waiting for it
            index, codes = index.pin_memory(), codes.pin_memory()
        run.index[count:].fill_(lane_runs.dummy)
        run.index[:count].copy_(index, non_blocking=cuda)
        run.codes[:count].copy_(codes, non_blocking=cuda)
        audio = run()[:count]
        self._used(slots, lane)
        return audio

    def _follow(self, slots: list[int], lane: str) -> None:
        """Make `lane` wait for the last use of any of `slots` on the other lane."""
        stream = self.lanes[lane].stream
        for slot in slots:
            last = self._last_use.get(slot)
            if last is not None and last[0] != lane and last[1] is not None:
                stream.wait_event(last[1])

    def _used(self, slots: list[int], lane: str) -> None:
        event = None
        if self.lanes[lane].stream is not None:
            event = torch.cuda.Event()
            event.record(self.lanes[lane].stream)
        for slot in slots:
            self._last_use[slot] = (lane, event)


@dataclass
class Piece:
    """The next frames [c, 16] of one request to decode; `keep`: whether their audio is the request's
    (False: decoder context, decoded only to set the state); `reset`: start a new window first; `urgent`:
    on the urgent lane (what precedes first audio, and the ramp)."""

    codes: torch.Tensor
    keep: bool
    reset: bool = False
    urgent: bool = False


class DecodeCursor:
    """A request's frames cut into decode pieces of captured chunk sizes: the ICL context first (silent),
    then a ramp of 1, 2, 4, 8, 16 frames so that first audio leaves after one frame, and at every
    official window start (each 300 frames) a reset with the last 25 frames replayed silently. The context
    and the ramp's pieces before its last size are urgent."""

    def __init__(self, context: torch.Tensor | None, ramp: tuple[int, ...] = CHUNK_RAMP):
        self.ramp = ramp
        self.chunks = 0  # kept chunks cut so far: the position on the ramp
        self.seen = 0  # frames cut into pieces so far, context included (the official windows count it)
        # Frames are kept as a list of rows [16] (the engine hands out one per frame) and stacked once per
        # piece: the engine thread does this for every row at every frame, and each torch op releases and
        # retakes the GIL that the server's event loop is waiting for.
        self.history: deque[torch.Tensor] = deque(maxlen=OFFICIAL_CONTEXT)  # for window restarts
        self.pending: list[torch.Tensor] = []  # frames [16] not cut yet
        self.pieces: deque[Piece] = deque()
        if context is not None and context.shape[0]:
            self._cut(list(context.cpu().unbind(0)), keep=False, urgent=True)

    def add(self, frame: torch.Tensor) -> None:
        self.pending.append(frame)

    def cut(self, final: bool) -> None:
        """Cut the pending frames that fill the next ramp chunk (all of them when `final`)."""
        while self.pending:
            size = self.ramp[min(self.chunks, len(self.ramp) - 1)]
            if len(self.pending) < size and not final:
                return
            take, self.pending = self.pending[:size], self.pending[size:]
            self._cut(take, keep=True, urgent=self.chunks < len(self.ramp) - 1)
            self.chunks += 1

    def _cut(self, frames: list[torch.Tensor], keep: bool, urgent: bool) -> None:
        while frames:
            offset = self.seen % OFFICIAL_WINDOW
            if offset == 0 and self.seen > 0:
                self._split(list(self.history), keep=False, urgent=urgent, reset=True)
            take = min(len(frames), OFFICIAL_WINDOW - offset)
            part, frames = frames[:take], frames[take:]
            self._split(part, keep, urgent)
            self.history.extend(part)
            self.seen += take

    def _split(self, frames: list[torch.Tensor], keep: bool, urgent: bool, reset: bool = False) -> None:
        """Greedily into captured sizes (25 = 16 + 8 + 1): a stateful decoder gives the same audio."""
        start = 0
        while start < len(frames):
            size = max(c for c in CHUNK_SIZES if c <= len(frames) - start)
            self.pieces.append(Piece(torch.stack(frames[start: start + size]), keep, reset and start == 0, urgent))
            start += size
