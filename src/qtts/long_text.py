"""Text too long for one request, spoken as consecutive segments with the same voice.

One request's speech ends where its KV cache does (4096 positions: about five minutes, less the prompt), and
a model's prosody drifts over minutes of one utterance; serving engines cut long text at sentence ends. A
text over `SEGMENT_CHARS` characters is cut by `text_segments.iter_segments` (sentence, then clause, then
word boundaries) and each segment is its own engine request: its own prompt with the same voice, its own
runaway budget, its own seed (`seed + i` when the caller gave one).

`Segments` is the caller's handle, with the interface of one request's `Generation`. Segment i + 1 is
submitted when segment i's first chunk is taken, so it is generated while segment i plays and its first
chunk is ready when segment i ends (no gap), and one long text holds at most two engine rows, however many
segments it has.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .engine.requests import Finished, Generation
from .text_segments import DEFAULT_MAX_CHARS, iter_segments

SEGMENT_CHARS = DEFAULT_MAX_CHARS  # ~20 s of English speech, ~60 s of Chinese


def split_long_text(text: str) -> list[str]:
    """`text` alone when it fits one segment, else its consecutive segments."""
    if len(text) <= SEGMENT_CHARS:
        return [text]
    return list(iter_segments(text, max_chars=SEGMENT_CHARS)) or [text]


class Segments:
    """The handle of one text spoken as `count` requests: iterate for audio chunks (each segment's in
    order; sync or `async for`), `result()`, `cancel()`, and `finished` (the segments' codes joined, the
    last segment's finish reason, the first one's timings)."""

    def __init__(self, submit_segment: Callable[[int], Generation], count: int):
        self._submit_segment = submit_segment
        self._count = count
        self._submitted: list[Generation] = []
        self._done: list[Finished] = []
        self._cancelled = False
        self.finished: Finished | None = None
        self._submit(0)

    def _submit(self, index: int) -> None:
        if index < self._count and index == len(self._submitted) and not self._cancelled:
            self._submitted.append(self._submit_segment(index))

    def _current(self) -> Generation:
        return self._submitted[len(self._done)]

    def _took_chunk(self) -> None:
        self._submit(len(self._done) + 1)  # the next segment runs while this one plays

    def _segment_ended(self, finished: Finished) -> None:
        self._done.append(finished)
        if len(self._done) == self._count or finished.reason in ("cancelled", "error"):
            first = self._done[0]
            codes = torch.cat([f.codes for f in self._done])
            self.finished = Finished(codes, finished.reason, first.queued_s, first.first_audio_s,
                                     first.first_frame_s)
        else:
            self._submit(len(self._done))

    def cancel(self) -> None:
        self._cancelled = True
        for generation in self._submitted:
            generation.cancel()

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        while self.finished is None:
            current = self._current()
            try:
                chunk = next(current)
            except StopIteration:
                self._segment_ended(current.finished)
                continue
            except BaseException:
                self.cancel()
                raise
            self._took_chunk()
            return chunk
        raise StopIteration

    def __aiter__(self):
        return self

    async def __anext__(self) -> np.ndarray:
        while self.finished is None:
            current = self._current()
            try:
                chunk = await anext(current)
            except StopAsyncIteration:
                self._segment_ended(current.finished)
                continue
            except BaseException:
                self.cancel()
                raise
            self._took_chunk()
            return chunk
        raise StopAsyncIteration

    def result(self) -> tuple[list[np.ndarray], Finished]:
        """Every remaining audio chunk and the joined `Finished` (blocks until the last segment ends)."""
        chunks = list(self)
        return chunks, self.finished
