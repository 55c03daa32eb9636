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
        layers: dict = {}
        for module in decoder.modules():
            new_state = getattr(module, "new_stream_state", None)
            if new_state is not None:
                layer_state = new_state(batch_size, weight.device, weight.dtype)
                if layer_state is not None:
                    layers[module] = layer_state
        # Every layer's state is a view into one buffer per dtype, a row per stream: moving streams between
        # batch rows (the engine's decode stage gathers and scatters them on every call) is then one copy
        # per buffer rather than one per layer (about 40).
        parts: dict[torch.dtype, list[torch.Tensor]] = {}
        for layer_state in layers.values():
            for tensor in layer_state if isinstance(layer_state, tuple) else (layer_state,):
                parts.setdefault(tensor.dtype, []).append(tensor)
        self.buffers = {dtype: torch.zeros(batch_size, sum(t[0].numel() for t in tensors), dtype=dtype,
                                           device=weight.device) for dtype, tensors in parts.items()}
        offsets = dict.fromkeys(self.buffers, 0)

        def view_of(tensor: torch.Tensor) -> torch.Tensor:
            start, width = offsets[tensor.dtype], tensor[0].numel()
            offsets[tensor.dtype] += width
            return self.buffers[tensor.dtype][:, start: start + width].view(tensor.shape)

        self.state = {module: type(layer_state)(*map(view_of, layer_state)) if isinstance(layer_state, tuple)
                      else view_of(layer_state) for module, layer_state in layers.items()}

    def state_tensors(self) -> list[torch.Tensor]:
        """The whole stream state, as buffers [batch, width] (one per dtype); updated in place by `decode`."""
        return list(self.buffers.values())

    def reset(self, rows: list[int] | None = None) -> None:
        """Start new utterances in the same buffers: in every row, or only in `rows` (a batch slot that
        a finished request leaves to a new one)."""
        # Rows as views (not an index tensor, whose copy to the device would wait for the stream).
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
