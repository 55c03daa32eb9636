"""A request as the engine keeps it, and the caller's handle on it.

The engine thread writes a request's events (audio chunks, then one `Finished`, or an exception) into its
sink; callers read them from the handle, from another thread (`Generation` is an iterator) or from an
asyncio event loop (`aiter`). Cancelling is a flag the engine looks at every frame.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..prompt import PromptPlan
from ..sampling import SamplingParams

# Why a request ended.
STOP = "stop"  # it sampled EOS
LENGTH = "length"  # it reached max_new_tokens
BUDGET = "budget"  # the runaway guard: more frames than its text could need
CANCELLED = "cancelled"  # the caller cancelled it or went away


class EngineStopped(RuntimeError):
    """The engine shut down before the request ended."""


@dataclass(frozen=True)
class Finished:
    """The last event of a request: its codes [frames, 16] (host), why it ended, and its timings."""

    codes: torch.Tensor
    reason: str
    queued_s: float  # from submission to the start of its prefill
    first_audio_s: float | None  # from submission to its first audio chunk (None: no audio)
    first_frame_s: float | None = None  # from submission to its first frame's codes on the host


class Sink:
    """Where the engine thread puts a request's events; read from a thread or from an event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop
        self.events: queue.Queue | asyncio.Queue = asyncio.Queue() if loop is not None else queue.Queue()

    def put(self, event) -> None:
        if self.loop is None:
            self.events.put(event)
        else:
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass


@dataclass(eq=False)
class Request:
    """One utterance in the engine: its prompt, sampling, seed and limit, where it is and what it made."""

    plan: PromptPlan
    params: SamplingParams
    seed: int
    limit: int  # frames at most: max_new_tokens - 1, or fewer by the runaway budget
    limit_reason: str  # LENGTH or BUDGET: what reaching `limit` means
    audio: bool  # decode audio (else codes only)
    sink: Sink
    room: int = 1 << 30  # frames its cache holds after the prompt
    # Text that arrives while it is spoken (submit with text_open): pieces (vectors, ready event, start,
    # final) not yet copied into its row; text_len / text_tokens count what the caller has given so far,
    # text_loaded / text_open_loaded what the engine has copied (what the next frame sees). Under the
    # engine's lock.
    text_open: bool = False
    text_tokens: int = 0
    text_len: int = 0
    text_pieces: list = field(default_factory=list)
    text_loaded: int = 0
    text_open_loaded: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    ready: torch.cuda.Event | None = None  # recorded on the caller's stream once the prompt is made
    # engine bookkeeping, touched by the engine thread only
    row: int | None = None
    prompt_len: int = 0  # cache rows its prompt takes (left padding included)
    enqueued: int = 0  # frames enqueued since its prefill that advance it (not waits for text)
    frames: list = field(default_factory=list)  # host codes [16] per frame received
    reason: str | None = None  # set when generation ended
    started: float | None = None
    first_frame: float | None = None
    first_audio: float | None = None
    decode_slot: int | None = None
    cursor: object = None
    audio_in_flight: int = 0  # decoded chunks not handed out yet
    audio_frames: int = 0  # frames of audio decoded so far

    @property
    def generating(self) -> bool:
        return self.reason is None


class Generation:
    """The caller's handle on a submitted request: iterate for audio chunks (float32 numpy arrays at 24 kHz)
    as they are made, or wait for the end with `result()`; `cancel()` stops it within a frame."""

    def __init__(self, request: Request):
        self._request = request
        self.finished: Finished | None = None

    def cancel(self) -> None:
        self._request.cancelled.set()

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self.finished is not None:
            raise StopIteration
        event = self._request.sink.events.get()
        return self._handle(event)

    def __aiter__(self):
        return self

    async def __anext__(self) -> np.ndarray:
        if self.finished is not None:
            raise StopAsyncIteration
        event = await self._request.sink.events.get()
        try:
            return self._handle(event)
        except StopIteration:
            raise StopAsyncIteration from None

    def _handle(self, event) -> np.ndarray:
        if isinstance(event, Finished):
            self.finished = event
            raise StopIteration
        if isinstance(event, BaseException):
            self.finished = Finished(torch.zeros(0, 16, dtype=torch.long), "error", 0.0, None)
            raise event
        return event

    def result(self) -> tuple[list[np.ndarray], Finished]:
        """Every remaining audio chunk and the `Finished` event (blocks until the request ends)."""
        chunks = list(self)
        return chunks, self.finished
