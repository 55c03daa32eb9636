"""Streaming audio: frames in as the engine makes them, PCM chunks out, equal to the non-streamed audio.

The official (non-streamed) decode runs 300-frame windows, each with 25 frames of left context whose audio
is dropped. A stateful `CodecStream` equals a one-pass decode, so the stream reproduces the official windows
exactly: at each window start it resets the decoder state and replays the 25 context frames silently.
Chunks ramp up (1, 2, 4, 8, 16 frames) so the first audio leaves after one frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from .audio import SAMPLE_RATE, Audio
from .models.codec_decoder import CodecDecoder
from .models.codec_stream import CodecStream

OFFICIAL_WINDOW = 300
OFFICIAL_CONTEXT = 25
CHUNK_RAMP = (1, 2, 4, 8, 16)


class OfficialWindowStream:
    """Decodes frames incrementally with the same 300/25 windowing as the official decode."""

    def __init__(self, decoder: CodecDecoder, context: torch.Tensor | None = None,
                 stream: CodecStream | None = None):
        """`context`: frames [n, 16] that precede the stream (ICL reference codes); their audio is dropped.
        `stream`: a batch-1 stream over `decoder` to reuse; it is reset first."""
        self.stream = stream if stream is not None else CodecStream(decoder, batch_size=1)
        self.stream.reset()
        self.history: torch.Tensor | None = None  # the last OFFICIAL_CONTEXT frames, for window restarts
        self.frames_seen = 0
        if context is not None and context.shape[0]:
            self.decode(context)

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """Decode the next frames [n, 16] and return their audio [n * 1920]."""
        pieces = [self.stream.decode(frames[None, :0])[0]]
        while frames.shape[0]:
            offset = self.frames_seen % OFFICIAL_WINDOW
            if offset == 0 and self.frames_seen > 0:
                self.stream.reset()
                self.stream.decode(self.history[None])  # the window's left context, audio dropped
            take = min(frames.shape[0], OFFICIAL_WINDOW - offset)
            part, frames = frames[:take], frames[take:]
            pieces.append(self.stream.decode(part[None])[0])
            recent = part if self.history is None else torch.cat([self.history, part])
            self.history = recent[-OFFICIAL_CONTEXT:]
            self.frames_seen += take
        return torch.cat(pieces)


def stream_audio(decoder: CodecDecoder, frames: Iterable[torch.Tensor], *,
                 context: torch.Tensor | None = None, ramp: tuple[int, ...] = CHUNK_RAMP,
                 stream: CodecStream | None = None) -> Iterator[Audio]:
    """Yield `Audio` chunks for `frames` (an iterable of code tensors [n, 16], n >= 1, as generated).

    Frames are grouped into chunks of `ramp[0]`, `ramp[1]`, ... frames (the last size repeats); each
    chunk is decoded as soon as it is complete, and the remainder when `frames` ends. `stream` reuses a
    decoder stream (one utterance at a time) instead of allocating one.
    """
    window = OfficialWindowStream(decoder, context, stream)
    pending: list[torch.Tensor] = []
    have = 0
    index = 0
    for block in frames:
        pending.append(block)
        have += block.shape[0]
        while have >= ramp[min(index, len(ramp) - 1)]:
            size = ramp[min(index, len(ramp) - 1)]
            codes = torch.cat(pending)
            chunk, rest = codes[:size], codes[size:]
            pending, have = ([rest] if rest.shape[0] else []), rest.shape[0]
            index += 1
            yield _audio(window.decode(chunk))
    if have:
        yield _audio(window.decode(torch.cat(pending)))


def _audio(wav: torch.Tensor) -> Audio:
    return Audio(wav.float().cpu().numpy(), SAMPLE_RATE)
