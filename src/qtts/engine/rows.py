"""Everything the engine keeps per batch row, preallocated once: a request lives in one row from its
prefill to its last frame, and a frame over the first b rows is one fixed set of shapes (a captured graph
per batch bucket).

Rows 0 .. capacity-1 are the running batch, kept packed: when a request leaves, the last running row moves
into its place. Rows capacity .. capacity+staging-1 are staging rows: arrivals are prefilled there (one
captured prefill per arrival count and prompt length) and then moved to the end of the batch.
"""

from __future__ import annotations

import torch

from ..models.layers import KVCache
from ..models.talker import Talker
from ..sampling import RowSampling


class RowStore:
    """The per-row device state: the talker's KV cache pool (and the code predictor's 16-position caches),
    the talker's last hidden state and logits, each row's next cache row (`slot`), RoPE position and first
    valid cache row, its frame counter, code-0 history (`seen`, for the repetition penalty), trailing text
    track, seed, sampling settings and its latest frame's codes."""

    def __init__(self, talker: Talker, capacity: int, staging: int, max_len: int, max_text: int):
        weight = talker.codec_head.weight
        device, dtype = weight.device, weight.dtype
        config = talker.config
        rows = capacity + staging
        self.capacity, self.staging, self.max_len, self.max_text = capacity, staging, max_len, max_text
        stack, predictor = talker.model, talker.code_predictor
        self.caches = [KVCache(rows, stack.num_kv_heads, max_len, stack.head_dim, device, dtype)
                       for _ in stack.layers]
        self.predictor_caches = [
            KVCache(rows, predictor.model.num_kv_heads, predictor.num_positions, predictor.model.head_dim,
                    device, dtype) for _ in predictor.model.layers]

        def zeros(*shape, dtype=dtype):
            return torch.zeros(*shape, device=device, dtype=dtype)

        hidden = config.hidden_size
        self.hidden = zeros(rows, hidden)
        self.logits = zeros(rows, config.vocab_size)
        self.slot = zeros(rows, 1, dtype=torch.int64)
        self.position = zeros(rows, 1, dtype=torch.int64)
        self.first_row = zeros(rows, dtype=torch.int32)
        self.step = zeros(rows, dtype=torch.int64)
        self.seen = zeros(rows, config.vocab_size, dtype=torch.bool)
        self.text = zeros(rows, max_text + 1, hidden)
        # Text that arrives while it is spoken: a row whose track is still open waits (its frames change
        # nothing) while its frame counter has caught up with the `text_len` vectors it has so far.
        self.text_len = zeros(rows, dtype=torch.int64)
        self.text_open = zeros(rows, dtype=torch.bool)
        self.seeds = zeros(rows, dtype=torch.int64)
        self.codes = zeros(rows, config.num_code_groups, dtype=torch.int64)
        self.sampling = RowSampling.allocate(rows, device)

    def per_row(self) -> list[torch.Tensor]:
        """Every per-row tensor except the caches (which move only their filled part)."""
        return [self.hidden, self.logits, self.slot, self.position, self.first_row, self.step, self.seen,
                self.text, self.text_len, self.text_open, self.seeds, self.codes, *self.sampling.tensors()]

    def staging_rows(self, count: int) -> slice:
        return slice(self.capacity, self.capacity + count)

    def move(self, to: slice, source: slice, filled: int) -> None:
        """Copy rows `source` into rows `to` (the same count), caches only up to cache row `filled`.
        Enqueued on the current stream after every frame before it, so the host may run ahead."""
        targets, sources = [], []
        for tensor in self.per_row():
            targets.append(tensor[to])
            sources.append(tensor[source])
        for cache in self.caches:
            for tensor in (cache.k, cache.v):
                targets.append(tensor[to, :, :filled])
                sources.append(tensor[source, :, :filled])
        # one multi-tensor launch per dtype rather than ~80 copies, each a few microseconds of host time
        # on the way of an arrival to its first frame
        torch._foreach_copy_(targets, sources)

    def load(self, rows: slice, prompt_valid: torch.Tensor, trailing: torch.Tensor, tts_pad: torch.Tensor,
             seeds: torch.Tensor, params: list, text_lengths: list[int], text_open: list[bool]) -> None:
        """Start requests in prefilled `rows`: their prompt validity [k, T] (False = left padding), trailing
        text tracks [k, N, H] (each row's own length in `text_lengths`), tts_pad [H], seeds [k],
        SamplingParams and whether more text will come (one per row)."""
        prompt_len = prompt_valid.shape[1]
        pad = (~prompt_valid).sum(-1)
        self.slot[rows] = prompt_len
        self.position[rows] = (prompt_len - pad)[:, None]
        self.first_row[rows] = pad.to(torch.int32)
        self.step[rows] = 0
        self.seen[rows] = False
        self.text[rows] = tts_pad
        self.text[rows, : trailing.shape[1]] = trailing
        self.seeds[rows] = seeds
        for row, row_params, length, is_open in zip(range(rows.start, rows.stop), params, text_lengths, text_open):
            self.sampling.load(row, row_params)
            self.text_len[row].fill_(length)
            self.text_open[row].fill_(is_open)

    def extend_text(self, row: int, vectors: torch.Tensor, start: int, final: bool) -> None:
        """Text-track vectors [n, H] of `row` from position `start` on; `final`: the track is complete (the
        positions after it stay tts_pad)."""
        self.text[row, start: start + vectors.shape[0]] = vectors
        self.text_len[row].fill_(start + vectors.shape[0])
        if final:
            self.text_open[row].fill_(False)
