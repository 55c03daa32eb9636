"""Streaming codec decode: frames go in as they are generated, audio comes out, nothing is decoded twice.

`CodecStream` owns the per-layer stream state of one `CodecDecoder` (conv input tails, transposed-conv
overlaps, the attention key/value window); the decoder's own layers read and update it in place. All
state lives in tensors allocated once, so a chunk of a given size always runs the same shapes.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .codec_decoder import CodecDecoder


class CodecStream:
    """Decode one batch of streams chunk by chunk; the concatenated output equals a one-pass decode."""

    def __init__(self, decoder: CodecDecoder, batch_size: int = 1):
        weight = next(decoder.parameters())
        self.decoder = decoder
        self.batch_size = batch_size
        self.state: dict = {}
        for module in decoder.modules():
            new_state = getattr(module, "new_stream_state", None)
            if new_state is not None:
                layer_state = new_state(batch_size, weight.device, weight.dtype)
                if layer_state is not None:
                    self.state[module] = layer_state

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor of the stream state, each [batch, ...]; updated in place by `decode`."""
        tensors = []
        for layer_state in self.state.values():
            tensors.extend(layer_state if isinstance(layer_state, tuple) else (layer_state,))
        return tensors

    def reset(self, rows: list[int] | None = None) -> None:
        """Start new utterances in the same buffers: in every row, or only in `rows` (a batch slot that
        a finished request leaves to a new one)."""
        # One launch rather than one per layer state: a streamed request starts with this. Rows as views
        # (not an index tensor, whose copy to the device would wait for the stream).
        tensors = self.state_tensors()
        torch._foreach_zero_(tensors if rows is None else [t[row] for t in tensors for row in rows])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [batch, frames, 16] (the next frames of each stream) -> waveform [batch, frames * 1920]."""
        if codes.dim() != 3 or codes.shape[0] != self.batch_size:
            raise InputError(f"this stream decodes codes [{self.batch_size}, frames, "
                             f"{self.decoder.config.num_quantizers}], got shape {tuple(codes.shape)}")
        if codes.shape[1] == 0:
            return codes.new_zeros(self.batch_size, 0, dtype=torch.float32)
        return self.decoder(codes, self.state)
