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
        # Every layer's keys and values in one tensor [layers, 2, rows, kv_heads, max_len, head_dim], each
        # layer's a view of it, so that moving a row's cache is one copy rather than one per layer and kind.
        self.kv = torch.zeros(len(stack.layers), 2, rows, stack.num_kv_heads, max_len, stack.head_dim,
                              device=device, dtype=dtype)
        self.caches = [LayerCache(self.kv[layer, 0], self.kv[layer, 1]) for layer in range(len(stack.layers))]
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
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for tensor in self.per_row():
            by_dtype.setdefault(tensor.dtype, []).append(tensor)
        self._per_row_by_dtype = list(by_dtype.values())

    def per_row(self) -> list[torch.Tensor]:
        """Every per-row tensor except the caches (which move only their filled part)."""
        return [self.hidden, self.logits, self.slot, self.position, self.first_row, self.step, self.seen,
                self.text, self.text_len, self.text_open, self.seeds, self.codes, *self.sampling.tensors()]

    def staging_rows(self, count: int) -> slice:
        return slice(self.capacity, self.capacity + count)

    def move(self, to: slice, source: slice, filled: int) -> None:
        """Copy rows `source` into rows `to` (the same count), caches only up to cache row `filled`.
        Enqueued on the current stream after every frame before it, so the host may run ahead."""
        # One multi-tensor launch per dtype (a multi-tensor copy falls back to one copy per tensor when its
        # tensors differ in dtype or are not dense) and one for the caches, rather than ~80 copies, each a
        # few microseconds of host time on the way of an arrival to its first frame.
        for tensors in self._per_row_by_dtype:
            torch._foreach_copy_([t[to] for t in tensors], [t[source] for t in tensors])
        self.kv[:, :, to, :, :filled].copy_(self.kv[:, :, source, :, :filled])

    def load(self, rows: slice, prompt_len: int, pads: list[int], trailing: list[torch.Tensor],
             tts_pad: torch.Tensor, seeds: list[int], params: list, text_open: list[bool]) -> None:
        """Start requests in rows `rows`, prefilled at `prompt_len` cache rows of which the first `pads[i]`
        are left padding: their trailing text tracks ([n_i, H] each; tts_pad [H] after them), seeds,
        SamplingParams and whether more text will come (one per row)."""
        columns = [
            (self.slot, [prompt_len] * len(pads)), (self.position, [prompt_len - pad for pad in pads]),
            (self.first_row, pads), (self.step, [0] * len(pads)), (self.seeds, seeds),
            (self.text_len, [track.shape[0] for track in trailing]), (self.text_open, text_open),
        ]
        columns += zip(self.sampling.tensors(), zip(*(self.sampling.values(p) for p in params)))
        self._fill(rows, columns)
        self.seen[rows] = False
        self.text[rows] = tts_pad
        for row, track in zip(range(rows.start, rows.stop), trailing):
            self.text[row, : track.shape[0]] = track

    def _fill(self, rows: slice, columns: list) -> None:
        """(tensor, one host value per row) pairs into the tensors' `rows`: one copy to the device and one
        multi-tensor copy per dtype, rather than a launch per tensor (or per tensor and row)."""
        by_dtype: dict[torch.dtype, list] = {}
        for tensor, values in columns:
            by_dtype.setdefault(tensor.dtype, []).append((tensor[rows], values))
        for dtype, pairs in by_dtype.items():
            block = torch.tensor([list(values) for _, values in pairs], dtype=dtype)
            if self.kv.is_cuda:  # pinned: the copy queues behind the frames in flight, no wait
                block = block.pin_memory().to(self.kv.device, non_blocking=True)
            targets = [target for target, _ in pairs]
            torch._foreach_copy_(targets, [column.view_as(target) for column, target in zip(block, targets)])

    def extend_text(self, row: int, vectors: torch.Tensor, start: int, final: bool) -> None:
        """Text-track vectors [n, H] of `row` from position `start` on; `final`: the track is complete (the
        positions after it stay tts_pad)."""
        self.text[row, start: start + vectors.shape[0]] = vectors
        self.text_len[row].fill_(start + vectors.shape[0])
        if final:
            self.text_open[row].fill_(False)


class LayerCache:
    """One layer's keys and values [rows, kv_heads, max_len, head_dim]: views of the store's pooled cache."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v
