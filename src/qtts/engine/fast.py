"""The fast generation loop: the prefill and then every frame replayed from CUDA graphs (or run eagerly
where there is no GPU), with each frame's code 0 read on the host without stalling the device.

Produces the same codes as `engine.reference.generate_codes_batch` (same bookkeeping: at most
max_new_tokens - 1 frames, each row cut before its first EOS). The host runs up to `RUN_AHEAD` frames
ahead of what it has seen, so a frame or two past the last EOS may run; they are dropped.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace

import torch

from ..errors import InputError
from ..kernels import enabled as kernels_enabled
from ..models.talker import Talker
from ..prompt import PromptPlan, pad_batch
from ..sampling import SamplingParams
from .frame import Frame
from .fused_weights import fuse_projections
from .graphs import FrameGraph, PrefillGraph

__all__ = ["FastEngine", "Frame", "FrameGraph", "FrameWatch", "generate_codes_batch"]


def _bucket(n: int, step: int) -> int:
    return -(-n // step) * step


def request_seeds(params: SamplingParams, batch: int) -> list[int]:
    """The seed of each row: the request's own, or fresh random ones (unseeded requests must differ)."""
    if params.seed is not None:
        return [params.seed] * batch
    return [secrets.randbits(62) for _ in range(batch)]


class FastEngine:
    """Generation on one talker through a captured frame that is kept between requests.

    Building a frame allocates the KV caches and captures the graph (Triton compiles on first use), so the
    engine keeps the last one and reuses it while requests fit: same batch size and sampling settings, cache
    and text track within the frame's sizes (rounded up to buckets). Not thread-safe: one request at a time.
    """

    LEN_BUCKET = 512
    TEXT_BUCKET = 128
    # Prompts are left-padded to a multiple of this for the prefill graphs: one capture per bucket, and
    # padding rows cost little (the prefill reads each weight once, whatever the row count).
    PREFILL_BUCKET = 64
    # How many frames the host may enqueue beyond the last one whose code 0 it has seen: enough to keep the
    # GPU busy, few enough that a stream hears of EOS (and stops) within a couple of frames.
    RUN_AHEAD = 2

    def __init__(self, talker: Talker, *, graphs: bool | None = None, fused: bool | None = None,
                 fuse_weights: bool | None = None):
        self.talker = talker
        device = talker.codec_head.weight.device
        self.graphs = device.type == "cuda" if graphs is None else graphs
        self.fused = fused
        fuse = (kernels_enabled(device) if fused is None else fused) if fuse_weights is None else fuse_weights
        self.projections = fuse_projections(talker) if fuse else None
        self._key = None
        self._caches = None
        self._frame: Frame | None = None
        self._run = None
        self._prefills: dict[int, PrefillGraph] = {}  # by prompt length, for the current frame
        self._prefill_pool = None

    def _frame_for(self, batch: int, max_len: int, max_frames: int, max_text: int, params: SamplingParams):
        # what a captured frame bakes in (seed and min_new_tokens are loaded per request)
        settings = replace(params, seed=None, max_new_tokens=1, min_new_tokens=0)
        key = (batch, settings)
        frame = self._frame
        # The graph points at the talker's caches: if anything re-allocated them (a reference-loop call on
        # the same talker), the frame must be rebuilt. Holding the old cache object makes `is` reliable.
        fits = (frame is not None and self._key == key and self._caches is self._current_caches()
                and max_len <= frame.max_len and max_frames <= frame.max_frames and max_text <= frame.max_text)
        if not fits:
            self._frame = self._run = self._caches = None  # free the old graphs and caches first
            self._prefills, self._prefill_pool = {}, None
            frame = Frame(self.talker, batch, _bucket(max_len, self.LEN_BUCKET), _bucket(max_frames, self.LEN_BUCKET),
                          _bucket(max(max_text, 1), self.TEXT_BUCKET), params, self.fused,
                          projections=self.projections, fuse_weights=self.projections is not None)
            self._run = FrameGraph(frame) if self.graphs else frame.step
            self._frame, self._key, self._caches = frame, key, self._current_caches()
        return frame, self._run

    def _prefill(self, frame: Frame, embeds: torch.Tensor, valid: torch.Tensor) -> None:
        """The prompt through the talker into the frame (a graph per prompt length on CUDA)."""
        if not self.graphs:
            frame.prefill(embeds, valid)
            return
        length = valid.shape[1]
        graph = self._prefills.get(length)
        if graph is None:
            if self._prefill_pool is None:
                self._prefill_pool = torch.cuda.graph_pool_handle()
            graph = self._prefills[length] = PrefillGraph(frame, length, self._prefill_pool)
        graph(embeds, valid)

    def _current_caches(self):
        return self.talker.model.layers[0].self_attn.kv_cache

    def iter_frames_batch(self, plans: list[PromptPlan], params: SamplingParams, *,
                          max_new_tokens: int | None = None,
                          seeds: list[int] | None = None) -> Iterator[torch.Tensor]:
        """Frames [batch, 16] as they are made (device tensors), until every row has sampled EOS or the limit
        is reached; rows that finished earlier carry EOS in code 0. `seeds` gives each row its own seed.
        Validates before returning."""
        if not plans:
            raise InputError("no prompts to generate from")
        limit = params.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not isinstance(limit, int) or limit < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {limit!r}")
        if seeds is not None and len(seeds) != len(plans):
            raise InputError(f"{len(seeds)} seeds for {len(plans)} prompts")
        return self._frames(plans, params, limit, seeds or request_seeds(params, len(plans)))

    @torch.no_grad()
    def _frames(self, plans: list[PromptPlan], params: SamplingParams, limit: int, seeds: list[int]):
        # with graphs, left-padded to the prefill graph's length
        embeds, valid, trailing = pad_batch(plans, self.PREFILL_BUCKET if self.graphs else 1)
        batch, prompt_len, _ = embeds.shape
        device = embeds.device
        frame, run = self._frame_for(batch, prompt_len + limit, max(limit - 1, 1), trailing.shape[1], params)
        self._prefill(frame, embeds, valid)
        frame.start(None, None, valid, trailing, plans[-1].tts_pad, torch.tensor(seeds, device=device),
                    params.min_new_tokens)
        watch = FrameWatch(frame)
        made = 0
        while made < limit - 1 or watch.seen < made:
            if made < limit - 1:
                run()
                watch.after_frame(made)
                made += 1
            # Hand out each frame once its code 0 is on the host; wait only to bound the run-ahead, or at
            # the end. The first frame is handed out before any other is enqueued, so a stream's first
            # decode does not queue behind later frames. A frame whose rows all sampled EOS ends generation.
            ahead = self.RUN_AHEAD if watch.seen else 0
            while watch.seen < made and (made - watch.seen > ahead or made == limit - 1 or watch.landed()):
                index = watch.advance()
                if watch.all_eos(index):
                    return
                yield frame.codes[:, index]

    def generate_codes_batch(self, plans: list[PromptPlan], params: SamplingParams, *,
                             max_new_tokens: int | None = None,
                             seeds: list[int] | None = None) -> list[torch.Tensor]:
        """Codes [frames, 16] per plan, each row cut before its first EOS."""
        frames = list(self.iter_frames_batch(plans, params, max_new_tokens=max_new_tokens, seeds=seeds))
        groups = self.talker.config.num_code_groups
        if not frames:
            device = plans[0].prefill.device
            return [torch.zeros(0, groups, dtype=torch.long, device=device) for _ in plans]
        codes = torch.stack(frames, dim=1)
        is_eos = codes[..., 0] == self.talker.config.codec_eos_token_id
        lengths = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), codes.shape[1]).tolist()
        return [codes[row, :n].clone() for row, n in enumerate(lengths)]


class FrameWatch:
    """Code 0 of each frame copied to pinned host memory after its replay; the host reads a frame's copy
    once its event has completed, so looking never stalls the device (only `wait` does, on purpose)."""

    def __init__(self, frame: Frame):
        self.frame = frame
        self.eos = frame.eos
        self.cuda = frame.codes.is_cuda
        self.host = torch.zeros(frame.max_frames, frame.batch, dtype=torch.int64, pin_memory=self.cuda)
        self.events: list[torch.cuda.Event | None] = []
        self.seen = 0  # frames whose code 0 is on the host

    def after_frame(self, index: int) -> None:
        self.host[index].copy_(self.frame.codes[:, index, 0], non_blocking=self.cuda)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        self.events.append(event)

    def landed(self) -> bool:
        """Whether the next unseen frame's code 0 is on the host (never waits)."""
        event = self.events[self.seen]
        return event is None or event.query()

    def advance(self) -> int:
        """Wait until the next unseen frame's code 0 is on the host; return that frame's index."""
        event = self.events[self.seen]
        if event is not None:
            event.synchronize()
        self.seen += 1
        return self.seen - 1

    def all_eos(self, index: int) -> bool:
        return bool((self.host[index] == self.eos).all())


@torch.no_grad()
def generate_codes_batch(talker: Talker, plans: list[PromptPlan], params: SamplingParams, *,
                         max_new_tokens: int | None = None, graphs: bool | None = None,
                         fused: bool | None = None, fuse_weights: bool | None = None,
                         seeds: list[int] | None = None) -> list[torch.Tensor]:
    """Codes [frames, 16] per plan through a one-off `FastEngine` (tests, probes)."""
    engine = FastEngine(talker, graphs=graphs, fused=fused, fuse_weights=fuse_weights)
    return engine.generate_codes_batch(plans, params, max_new_tokens=max_new_tokens, seeds=seeds)
