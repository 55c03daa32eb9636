"""Streaming codec decode with one CUDA graph per chunk size: a chunk costs one graph replay, no Python
per layer and no kernel launch overhead, while the audio stays that of the eager `CodecStream`.

The graphs of all chunk sizes run over the one stream state of the wrapped `CodecStream`, so chunks of
different sizes follow each other freely. A chunk of a size that was not captured is split greedily into
captured sizes (25 frames = 16 + 8 + 1), which a stateful stream decodes to the same audio. Without CUDA
the same static buffers are decoded eagerly, so the bookkeeping runs (and is tested) on CPU as well.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..models.codec_stream import CodecStream

# The streaming ramp (first audio after one frame) and the sizes that cover any remainder.
CHUNK_SIZES = (1, 2, 4, 8, 16)


class ChunkGraph:
    """Static codes [batch, frames, 16] in, static audio [batch, frames * 1920] out, for one chunk size."""

    def __init__(self, stream: CodecStream, frames: int):
        weight = next(stream.decoder.parameters())
        self.stream = stream
        self.frames = frames
        self.codes = torch.zeros(stream.batch_size, frames, stream.decoder.config.num_quantizers,
                                 dtype=torch.long, device=weight.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.audio: torch.Tensor | None = None

    def capture(self, pool) -> None:
        """Record `stream.decode(codes)`; recording runs no kernel, so the stream state is untouched."""
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool), torch.no_grad():
            self.audio = self.stream.decode(self.codes)

    def replay(self) -> torch.Tensor:
        """Decode the codes now in `self.codes`; the result is overwritten by the next replay of any size."""
        if self.graph is None:
            return self.stream.decode(self.codes)
        self.graph.replay()
        return self.audio


class GraphedCodecStream:
    """`CodecStream.decode` and `reset` with one captured CUDA graph per chunk size (eager without CUDA).

    Hold one per decoder and batch size and `reset()` it between utterances: capturing costs far more
    than a chunk. Not for concurrent use; the stream state is shared by all sizes.
    """

    def __init__(self, stream: CodecStream, chunk_sizes: tuple[int, ...] = CHUNK_SIZES, warmup: int = 2):
        if not chunk_sizes or min(chunk_sizes) < 1:
            raise InputError(f"chunk sizes must be positive frame counts, got {chunk_sizes}")
        self.stream = stream
        self.batch_size = stream.batch_size
        self.samples_per_frame = stream.decoder.samples_per_frame
        # Largest first: the greedy split takes the biggest chunk that fits.
        self.chunks = [ChunkGraph(stream, frames) for frames in sorted(set(chunk_sizes), reverse=True)]
        self.device = self.chunks[0].codes.device
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                self._capture(warmup)

    @property
    def captured(self) -> bool:
        return all(chunk.graph is not None for chunk in self.chunks)

    def _capture(self, warmup: int) -> None:
        # Warm-up runs compile the Triton kernels and let cuBLAS/cuDNN settle before recording; they
        # advance the stream state, which is put back afterwards so wrapping a live stream is harmless.
        saved = [tensor.clone() for tensor in self.stream.state_tensors()]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.no_grad():
            for chunk in self.chunks:
                for _ in range(warmup):
                    self.stream.decode(chunk.codes)
        torch.cuda.current_stream(self.device).wait_stream(side)
        # One memory pool for all sizes: replays run one after another on one stream, never concurrently.
        pool = torch.cuda.graph_pool_handle()
        for chunk in self.chunks:
            chunk.capture(pool)
        for tensor, value in zip(self.stream.state_tensors(), saved):
            tensor.copy_(value)

    def reset(self, rows: list[int] | None = None) -> None:
        """As `CodecStream.reset`: start new utterances in every row, or only in `rows`."""
        self.stream.reset(rows)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [batch, frames, 16] (the next frames of each stream) -> waveform [batch, frames * 1920].

        The waveform is a new tensor, safe to keep across calls. Pass codes on the decoder's device to keep
        the call free of host synchronisation.
        """
        groups = self.stream.decoder.config.num_quantizers
        if codes.dim() != 3 or codes.shape[0] != self.batch_size or codes.shape[2] != groups:
            raise InputError(f"this stream decodes codes [{self.batch_size}, frames, {groups}], "
                             f"got shape {tuple(codes.shape)}")
        frames = codes.shape[1]
        weight = next(self.stream.decoder.parameters())
        audio = torch.empty(self.batch_size, frames * self.samples_per_frame, dtype=weight.dtype,
                            device=self.device)
        start = 0
        while start < frames:
            chunk = self._largest_fitting(frames - start)
            if chunk is None:  # fewer frames left than the smallest captured size
                piece = self.stream.decode(codes[:, start:].to(self.device))
                stop = frames
            else:
                stop = start + chunk.frames
                chunk.codes.copy_(codes[:, start:stop])
                piece = chunk.replay()
            audio[:, start * self.samples_per_frame: stop * self.samples_per_frame] = piece
            start = stop
        return audio

    def _largest_fitting(self, frames: int) -> ChunkGraph | None:
        return next((chunk for chunk in self.chunks if chunk.frames <= frames), None)
