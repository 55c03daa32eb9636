"""The engine: one thread that owns the talker and the codec decoder and runs every request, many at once.

Requests join the running batch at frame boundaries after their prefill (several arrivals are prefilled
together, into staging rows) and leave at EOS, at their own frame limit, or when cancelled. Each frame runs
the rows in the smallest captured batch bucket that holds them; every sampling setting is per row, so
nothing is captured while serving. The host enqueues up to `RUN_AHEAD` frames beyond the last one whose
codes it has read (pinned copies and events, never a blocking read while the GPU has work), hands each
request its frames, and decodes the audio of every request together (`decode_stage`).

Each iteration: admit arrivals (new requests first: their prefill, then the next frame is theirs as well),
enqueue a frame, read landed frames, retire finished rows (the last row moves into the hole), decode the
chunks that are due, deliver landed audio. On CPU the same loop runs eagerly (no graphs, no events).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from collections import Counter, deque

import torch

from .. import kernels
from ..audio import SAMPLE_RATE
from ..errors import InputError
from ..models.codec_decoder import CodecDecoder
from ..models.talker import Talker
from ..prompt import PromptPlan, left_pad_into
from ..sampling import SamplingParams, request_seeds
from .decode_stage import BULK, FRAME_PRIORITY, URGENT, DecodeCursor, DecodeStage
from .frame import Frame, LayerOps, prefill
from .fused_weights import fuse_projections
from .graphs import FrameGraph, PrefillGraph
from .requests import BUDGET, CANCELLED, LENGTH, STOP, EngineStopped, Finished, Generation, Request, Sink
from .rows import RowStore

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64)
# CPU float32 products of 1, 2, 3 or 5 rows round differently from larger ones, so on CPU the smallest
# bucket is 4: a request then gets the same codes whatever company it keeps.
CPU_BATCH_BUCKETS = (4, 8, 16, 32, 48, 64)
ARRIVAL_BUCKETS = (1, 2, 4, 8)  # requests prefilled together
PREFILL_BUCKET = 64  # prompts are left-padded to a multiple of this (one captured prefill per length)
PREFILL_GRAPH_MAX = 256  # longer prompts are prefilled eagerly
# At most this many prompt positions (padding included) per prefill between frames, so that arrivals stall
# the running streams for a bounded time; a longer prompt is prefilled alone.
PREFILL_TOKENS = 2048
# How many frames the host may enqueue beyond the last one whose codes it has read: enough to keep the GPU
# busy, few enough that a request hears of EOS (and leaves) within a couple of frames.
RUN_AHEAD = 2
DECODE_ROUNDS = 4  # decode calls per request and lane per iteration at most (context replays need several)
# Steady chunks (the bulk lane) wait while a stream's audio is well ahead of playback, so that many
# requests' chunks decode in one call: they decode once some request has this many pieces waiting, or its
# decoded audio leads playback (from its first chunk) by less than LEAD_LOW_S, or it has stopped
# generating; every request with a piece waiting joins that call.
BULK_PIECES = 2
LEAD_LOW_S = 0.5
# A playing stream that waits for its text (a live session: audio arrives word by word, so its lead stays
# thin) and leads playback by less than this decodes its pieces on the urgent lane, ahead of frames,
# rather than behind them on the bulk lane. H100, 16 live sessions: 2 of 48 utterances underran against 16
# of 48, but first audio p95 rose from 59 to 123 ms. Not for streams whose text is all in: applied to them
# too, 64 closed-loop streams over HTTP underran more (31 of 430 against 4 of 448) at a lower rate (314
# against 349 audio-s/s), the small urgent calls crowding out frames.
LEAD_URGENT_S = 0.25
MIN_ROOM = 16  # frames a prompt must leave in the cache, or the request is refused
# Admission: a batch may take one more request while its frames, measured, take at most this share of the
# audio they make (the rest is headroom for prefills and decode bursts)...
REALTIME_SHARE = 0.8
FRAME_TIME_WEIGHT = 0.1  # the weight of the newest interval in the running mean of seconds per frame
# ...and a request that must wait for a row is taken while the queue ahead of it drains, at the rate the
# last DEPARTURES requests left a full batch, within the caller's first-audio target.
DEPARTURES = 32
AUDIO_POLL_S = 0.0002  # while waiting for a frame with audio in flight: how often to look for landed audio
TEXT_WAIT_POLL_S = 0.005  # while every row waits for text: how often to look for a cancel
CLOSE_TIMEOUT_S = 30.0  # how long close() waits for the engine thread (a frame takes milliseconds)


def frame_budget(text_tokens: int) -> int | None:
    """The runaway guard: frames a request may take for `text_tokens` tokens of text (None: no text given).
    Speech runs at about 3-5 frames per token; this allows 4 s plus 1.2 s per token."""
    return None if text_tokens <= 0 else 50 + 15 * text_tokens


class Scheduler:
    """Continuous batching over one talker and one codec decoder (None: codes only, for tests and probes).
    `submit` from any thread."""

    def __init__(self, talker: Talker, decoder: CodecDecoder | None, *, max_batch: int = 64, max_len: int = 4096,
                 max_text: int = 1024, graphs: bool | None = None, fused: bool | None = None):
        device = talker.codec_head.weight.device
        self.device = device
        self.talker, self.decoder = talker, decoder
        self.graphs = device.type == "cuda" if graphs is None else graphs
        fused = kernels.enabled(device) if fused is None else fused
        projections = fuse_projections(talker) if fused else None
        self.ops = LayerOps(fused, projections, fused and kernels.pdl_supported(device))
        ladder = BATCH_BUCKETS if device.type == "cuda" else CPU_BATCH_BUCKETS
        # at least the ladder's smallest bucket, so that a small engine rounds as a large one does
        self.buckets = tuple(b for b in ladder if b < max_batch) + (max(max_batch, ladder[0]),)
        self.max_batch, self.max_len, self.max_text = max_batch, max_len, max_text
        self.arrival_buckets = tuple(k for k in ARRIVAL_BUCKETS if k <= max_batch)
        self.eos = talker.config.codec_eos_token_id
        # The engine's own stream: work that callers put on the default stream (building a prompt, a
        # synchronous copy) neither waits behind the engine's frames nor makes them wait. Frames and prefills
        # are captured on it, as they are replayed on it.
        self.stream = torch.cuda.Stream(device, priority=FRAME_PRIORITY) if device.type == "cuda" else None
        began = time.perf_counter()
        with torch.inference_mode():
            self.store = RowStore(talker, self.buckets[-1], max(self.arrival_buckets), max_len, max_text)
            self.frames = {b: Frame(talker, self.ops, self.store, b) for b in self.buckets}
            self.decode_stage = (None if decoder is None
                                 else DecodeStage(decoder, max_batch, ladder, self.graphs))
            # each bucket's frame, eager or as graphs: `draw_codes`, `advance`, `step` (both)
            self._run_frame: dict[int, Frame | FrameGraph] = dict(self.frames)
            self._prefills: dict[tuple[int, int], PrefillGraph] = {}
            if self.graphs:
                pool = torch.cuda.graph_pool_handle()
                for b, frame in self.frames.items():
                    self._run_frame[b] = FrameGraph(frame, stream=self.stream, pool=pool)
                for k in self.arrival_buckets:
                    for length in range(PREFILL_BUCKET, PREFILL_GRAPH_MAX + 1, PREFILL_BUCKET):
                        self._prefills[(k, length)] = PrefillGraph(talker, self.ops, self.store, k, length,
                                                                   stream=self.stream, pool=pool)
                # capture ran frames over zeroed rows: start every row clean
                for tensor in self.store.per_row():
                    tensor.zero_()
        self.startup_s = time.perf_counter() - began
        self.lead_low_s = LEAD_LOW_S
        self.frame_s = (decoder.samples_per_frame if decoder is not None else 1920) / SAMPLE_RATE
        ring = torch.zeros(RUN_AHEAD + 2, self.buckets[-1], talker.config.num_code_groups, dtype=torch.int64)
        self._ring = ring.pin_memory() if device.type == "cuda" else ring
        self._ring_next = 0
        self._advance_due = None  # a frame whose talker step waits for a first chunk (`_enqueue_frame`)
        self._lock = threading.Condition()
        self._inbox: deque[Request] = deque()
        self._running: list[Request] = []  # row i holds _running[i]
        self._in_flight: deque = deque()  # (event, ring index, rows snapshot) per enqueued frame
        self._decoding: list[Request] = []  # finished generating, audio still being decoded
        self._audio_in_flight: deque = deque()  # (event, request, host audio), each request's in order
        self._stopping = False
        self._thread: threading.Thread | None = None
        # measured load, for admission: seconds between frames per batch bucket while frames ran back to
        # back, and when the last requests left
        self._seconds_per_frame: dict[int, float] = {}
        self._last_frame: tuple[float, int] | None = None  # (when, bucket) of the previous frame
        self._departures: deque[float] = deque(maxlen=DEPARTURES)
        # when the engine thread last got something done (a frame's codes or audio handed out) or looked
        # for work and found none: how long it has been stuck, if it is (`stalled_s`)
        self._progress_at = time.monotonic()
        # decode calls and the requests they decoded, per lane: rows per call is how well decodes batch
        self.stats = {"frames": 0, "prefills": 0, "prefill_s": 0.0, "reasons": Counter(),
                      "decode_calls": Counter(), "decode_rows": Counter()}

    # -- callers -------------------------------------------------------------------------------------------
    def submit(self, plan: PromptPlan, params: SamplingParams, *, seed: int | None = None, audio: bool = True,
               loop=None, text_open: bool = False) -> Generation:
        """Queue one request and return its handle; validated here, so a bad request raises in the caller.
        `seed` overrides the params' (default: the params' seed or a fresh random one); `loop`: deliver
        events to this asyncio loop instead of a thread-safe queue; `text_open`: more of the text track
        comes later through `extend_text` (the row waits for it in the batch)."""
        if audio and self.decode_stage is None:
            raise InputError("this engine has no codec decoder: submit with audio=False")
        prompt_len = _prefill_length(plan.prefill.shape[0])
        room = self.max_len - prompt_len - 1  # frames the cache holds after this prompt
        if room < MIN_ROOM:
            raise InputError(
                f"the prompt takes {plan.prefill.shape[0]} of the engine's {self.max_len} cache positions, "
                "leaving no room for speech: shorten the text, instructions or reference (or load with a "
                "larger max_len)")
        if plan.trailing.shape[0] > self.max_text:
            raise InputError(f"the text track has {plan.trailing.shape[0]} positions; the engine holds "
                             f"{self.max_text}: shorten the text")
        request = Request(plan, params, request_seeds(params, 1)[0] if seed is None else seed, 0, LENGTH, audio,
                          Sink(loop), room=room, text_open=text_open, text_tokens=plan.text_tokens,
                          text_len=plan.trailing.shape[0])
        self._set_limit(request)
        if plan.prefill.is_cuda:  # the prompt was made on the caller's stream: the engine waits for it
            request.ready = torch.cuda.Event()
            request.ready.record()
        with self._lock:
            if self._stopping:
                raise EngineStopped("the engine is shut down")
            if not self._inbox and not self._busy():  # an idle engine: its clock of progress starts now
                self._progress_at = time.monotonic()
            self._inbox.append(request)
            self._lock.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="qtts-engine", daemon=True)
                self._thread.start()
                # A script that exits without close() stops the engine thread before the interpreter
                # tears down under it (a daemon thread woken mid-finalisation aborts the process).
                atexit.register(_close_at_exit, weakref.ref(self))
        return Generation(request)

    def _set_limit(self, request: Request) -> None:
        """A request's frame limit: max_new_tokens - 1, fewer by the runaway budget of the text it has, and
        no more than its cache holds (it then ends there, as it would at max_new_tokens)."""
        limit, reason = request.params.max_new_tokens - 1, LENGTH
        budget = frame_budget(request.text_tokens)
        if budget is not None and budget < limit:
            limit, reason = budget, BUDGET
        if limit > request.room:
            limit, reason = request.room, LENGTH
        request.limit, request.limit_reason = max(limit, 0), reason

    def extend_text(self, generation: Generation, vectors: torch.Tensor, tokens: int, final: bool) -> None:
        """More of an open request's text track: vectors [n, H] (`tokens` more text tokens for its runaway
        budget); `final`: its track is complete. From any thread."""
        request = generation._request
        with self._lock:
            if not request.text_open:
                raise InputError("this request's text has ended: no more text can be added")
            if request.text_len + vectors.shape[0] > self.max_text:
                raise InputError(f"the text track would have {request.text_len + vectors.shape[0]} positions; "
                                 f"the engine holds {self.max_text}: end the utterance and start another")
            ready = None
            if vectors.is_cuda:  # made on the caller's stream: the engine waits for it
                ready = torch.cuda.Event()
                ready.record()
            request.text_pieces.append((vectors, ready, request.text_len, final))
            request.text_len += vectors.shape[0]
            request.text_tokens += tokens
            request.text_open = not final
            self._lock.notify()

    # -- admission ---------------------------------------------------------------------------------------
    def admission_delay(self, first_audio_target_s: float) -> float | None:
        """None if one more request can be taken now without harm, else seconds after which to ask again.

        Refused when its row would put the batch in a bucket whose measured frames take more than
        REALTIME_SHARE of the audio they make while a smaller bucket's keep up (the running streams would
        fall behind playback; a device slower than real time at any size is not helped by refusing), or
        when it would wait for a row and the requests ahead of it, leaving at the rate requests have been
        leaving, would not make room within `first_audio_target_s`. An idle or fresh engine takes it."""
        with self._lock:
            running, rows = len(self._running), len(self._running) + len(self._inbox) + 1
        if running == 0:
            return None
        budget = REALTIME_SHARE * self.frame_s
        bucket = _bucket(min(rows, self.max_batch), self.buckets)
        measured = dict(self._seconds_per_frame)  # a copy: the engine thread adds buckets as they first run
        per_frame = _nearest_below(measured, bucket)
        if per_frame is not None and per_frame > budget and any(
                seconds <= budget for b, seconds in measured.items() if b < bucket):
            return max(1.0, per_frame / self.frame_s)  # the batch must thin out first: seconds
        ahead = rows - self.max_batch  # requests that must leave before this one has a row
        if ahead > 0:
            rate = self.departure_rate()
            if rate is not None and ahead / rate > first_audio_target_s:
                return ahead / rate
        return None

    def seconds_per_frame(self, rows: int) -> float | None:
        """Measured seconds between frames of a batch of `rows` rows (the bucket's, else the nearest smaller
        bucket's: a frame costs about the same for any number of rows); None before any frame ran."""
        return _nearest_below(dict(self._seconds_per_frame), _bucket(rows, self.buckets))

    def departure_rate(self) -> float | None:
        """Requests per second that finished since the batch was last full with nobody waiting for a row
        (the rate at which rows free up for a queue); None until a few have."""
        times = list(self._departures)
        if len(times) < 4 or times[-1] <= times[0]:
            return None
        return (len(times) - 1) / (times[-1] - times[0])

    def _measure_frame(self, bucket: int, now: float) -> None:
        """The interval since the previous frame, when that one ran in the previous iteration: frames
        back to back are what the batch costs, host and decode included."""
        if self._last_frame is not None and self._last_frame[1] == bucket:
            interval = now - self._last_frame[0]
            mean = self._seconds_per_frame.get(bucket)
            self._seconds_per_frame[bucket] = interval if mean is None else (
                mean + FRAME_TIME_WEIGHT * (interval - mean))
        self._last_frame = (now, bucket)

    @property
    def alive(self) -> bool:
        """False once the engine thread has stopped (it starts with the first request)."""
        return not self._stopping and (self._thread is None or self._thread.is_alive())

    def stalled_s(self) -> float:
        """Seconds the engine thread has had work in hand (requests waiting, rows that can advance, frames or
        audio in flight) without getting any of it done (a frame's codes, audio, a prefill); 0 while it makes
        progress or has nothing to do. On a GPU a frame takes milliseconds, so seconds here mean the thread
        is stuck (a GPU that stopped answering): the server then says it is unhealthy and refuses new
        requests rather than queueing them forever."""
        # Read without the engine's lock: a stuck engine thread may be the one holding it.
        working = bool(self._inbox) or self._busy()
        return time.monotonic() - self._progress_at if working else 0.0

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._inbox)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Cancel everything and stop the engine thread. A thread stuck in a wait on the GPU cannot be
        stopped: after `timeout` seconds it is left behind (a daemon thread, it does not keep the process
        alive) and `EngineStopped` is raised, so that a server still shuts down."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise EngineStopped(f"the engine thread did not stop within {timeout:g} s: it is stuck in a "
                                    f"wait on the device (no progress for {self.stalled_s():.0f} s)")

    # -- the engine thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), (torch.cuda.device(self.device) if cuda else contextlib.nullcontext()), \
                (torch.cuda.stream(self.stream) if cuda else contextlib.nullcontext()):
            while True:
                with self._lock:
                    while not (self._stopping or self._inbox or self._busy()):
                        self._progress_at = time.monotonic()  # nothing to do is not being stuck
                        self._last_frame = None  # idle: the next frame's interval is not its cost
                        if not self._running:
                            self._departures.clear()
                        # rows waiting for text: look again soon for a cancel (text and arrivals notify)
                        self._lock.wait(TEXT_WAIT_POLL_S if self._running else None)
                    if self._stopping:
                        break
                try:
                    self._iteration()
                except Exception as error:  # a failure fails the requests in the engine, not the engine
                    self._fail_all(error)
            self._fail_all(EngineStopped("the engine was shut down"))

    def _busy(self) -> bool:
        """Work to do: a row that can advance (or has text to take in, or was cancelled), frames or audio in
        flight, requests still decoding."""
        runnable = any(r.text_pieces or r.cancelled.is_set() or _advances(r) for r in self._running)
        return bool(runnable or self._in_flight or self._decoding or self._audio_in_flight)

    def _iteration(self) -> None:
        self._admit()
        self._take_text()
        advancing = any(_advances(r) for r in self._running)
        if advancing:
            self._enqueue_frame()
        else:
            self._last_frame = None  # a pause: the next interval is not a frame's cost
        self._read_frames(wait=len(self._in_flight) > RUN_AHEAD or not advancing)
        # Time to first audio first: a request whose first frame is enqueued gets it read and decoded
        # before more frames are enqueued, rather than behind RUN_AHEAD of them.
        while self._in_flight and any(r.enqueued and not r.frames and r.generating for r in self._running):
            self._read_frames(wait=True)
        self._retire()
        self._decode()
        self._first_audio_first()
        self._deliver(wait=not self._running and not self._in_flight)

    def _admit(self) -> None:
        """Prefill waiting requests into free rows: as many as fit the batch, the largest arrival bucket
        and the prefill token budget."""
        with self._lock:
            waiting = [r for r in self._inbox if not r.cancelled.is_set()]
            for request in self._inbox:
                if request.cancelled.is_set():
                    self._finish_unstarted(request)
            self._inbox.clear()
            room = min(self.max_batch - len(self._running), max(self.arrival_buckets))
            # A request that has left the batch keeps its decoder slot until its last audio is decoded:
            # an arrival with audio needs a free slot as well as a row.
            slots = len(self.decode_stage.free) if self.decode_stage is not None else 0
            taken, longest = [], 0
            for request in waiting:
                length = max(longest, request.plan.prefill.shape[0])
                padded = _prefill_length(length)
                if len(taken) == room or (taken and padded * _bucket(len(taken) + 1, self.arrival_buckets)
                                          > PREFILL_TOKENS) or (request.audio and slots == 0):
                    break
                slots -= request.audio
                taken.append(request)
                longest = length
            self._inbox.extend(waiting[len(taken):])
        if taken:
            try:
                self._advance_now()  # the prefill moves rows into the batch the talker step runs over
                self._prefill(taken)
            except Exception as error:
                # out of the inbox and not (all) in the batch yet: `_fail_all` would not reach them
                running = {id(r) for r in self._running}
                for request in taken:
                    if id(request) not in running:
                        request.reason = "error"
                        request.sink.put(error)
                raise
        if not self._inbox and len(self._running) < self.max_batch:
            self._departures.clear()  # nobody waits for a row: how fast rows free up starts anew

    def _prefill(self, requests: list[Request]) -> None:
        began = time.perf_counter()
        count = len(requests)
        k = _bucket(count, self.arrival_buckets)
        plans = [r.plan for r in requests]
        for request in requests:
            if request.ready is not None:
                stream = torch.cuda.current_stream()
                stream.wait_event(request.ready)
                for tensor in (request.plan.prefill, request.plan.trailing, request.plan.tts_pad):
                    tensor.record_stream(stream)  # used here beyond the caller's stream
        length = _prefill_length(max(plan.prefill.shape[0] for plan in plans))
        graph = self._prefills.get((k, length))
        if graph is not None:  # the prompts go straight into the graph's inputs
            embeds, valid = graph.embeds, graph.valid
        else:
            embeds = plans[0].prefill.new_empty(k, length, plans[0].prefill.shape[-1])
            valid = torch.empty(k, length, dtype=torch.bool, device=embeds.device)
        pads = left_pad_into(plans, embeds, valid)  # padding rows past the plans: no valid position
        if graph is not None:
            graph()
        else:
            prefill(self.talker, self.ops, self.store, self.store.staging_rows(k), embeds, valid)
        staging = self.store.staging_rows(count)
        with self._lock:  # the track holds the plan's text at load; later pieces come through _take_text
            for r in requests:
                r.text_loaded = r.plan.trailing.shape[0]
                r.text_open_loaded = r.text_open or bool(r.text_pieces)  # submitted open
            opened = [r.text_open_loaded for r in requests]
        self.store.load(staging, length, pads, [plan.trailing for plan in plans], plans[-1].tts_pad,
                        [r.seed for r in requests], [r.params for r in requests], opened)
        first = len(self._running)
        self.store.move(slice(first, first + count), staging, filled=length)
        now = time.perf_counter()
        for offset, request in enumerate(requests):
            request.row, request.prompt_len, request.started = first + offset, length, now
            if request.audio:
                with self.decode_stage.on_stream(URGENT):
                    request.decode_slot = self.decode_stage.acquire()
                request.cursor = DecodeCursor(request.plan.context)
            self._running.append(request)
        self.stats["prefills"] += 1
        self.stats["prefill_s"] += time.perf_counter() - began
        self._progress_at = time.monotonic()  # (on CPU the prefill has run by now: a long one is not a stall)

    def _take_text(self) -> None:
        """Copy the text that arrived for running requests into their rows (before the next frame)."""
        for request in self._running:
            if not request.text_pieces:
                continue
            self._advance_now()  # the talker step of the frame before reads the track as it was
            with self._lock:  # what the next frame sees changes with the pieces, for readers of both
                pieces, request.text_pieces = request.text_pieces, []
                self._set_limit(request)
                vectors, _, start, final = pieces[-1]
                request.text_loaded = start + vectors.shape[0]
                request.text_open_loaded = not final
            for vectors, ready, start, final in pieces:
                if ready is not None:
                    stream = torch.cuda.current_stream()
                    stream.wait_event(ready)
                    vectors.record_stream(stream)
                self.store.extend_text(request.row, vectors, start, final)

    def _enqueue_frame(self) -> None:
        self._advance_now()
        count = len(self._running)
        bucket = _bucket(count, self.buckets)
        self._measure_frame(bucket, time.perf_counter())
        frame = self._run_frame[bucket]
        frame.draw_codes()
        index = self._ring_next
        self._ring_next = (index + 1) % self._ring.shape[0]
        host = self._ring[index]
        cuda = self.device.type == "cuda"
        # The codes leave before the talker's step, which only the next frame needs: a frame's audio (a
        # request's first above all) waits for half of the frame less.
        host[:count].copy_(self.store.codes[:count], non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        # A request's first codes decode with the device to themselves where `_first_audio_first` lets
        # them: the talker step, which only the next frame needs, is enqueued after that decode.
        first_codes = any(r.enqueued == 0 and r.cursor is not None and _advances(r) for r in self._running)
        if first_codes and self._streams_ahead():
            self._advance_due = frame
        else:
            frame.advance()
        # counted before the rows advance, so that a reader who sees a row's count sees this frame too
        self.stats["frames"] += 1
        # which rows this frame advances: those the device sees as active (the text copied so far)
        active = [_advances(r) for r in self._running]
        for request, advances in zip(self._running, active):
            request.enqueued += advances
        self._in_flight.append((event, index, list(self._running), active))

    def _read_frames(self, wait: bool) -> None:
        """Hand out every frame whose codes are on the host; with `wait`, wait for the oldest first."""
        while self._in_flight:
            event, index, rows, active = self._in_flight[0]
            if event is not None and not event.query():
                if not wait:
                    return
                self._wait_for(event)
            wait = False
            self._in_flight.popleft()
            self._progress_at = time.monotonic()
            codes = self._ring[index][: len(rows)].clone()
            code0 = codes[:, 0].tolist()
            # one op for every row's frame: each op releases and retakes the GIL, which callers want too
            frames = codes.unbind(0)
            for row, request in enumerate(rows):
                if not request.generating or not active[row]:
                    continue
                if code0[row] == self.eos:
                    self._end(request, STOP)
                    continue
                if len(request.frames) >= request.limit:  # a limit of 0 frames
                    self._end(request, request.limit_reason)
                    continue
                if not request.frames:
                    request.first_frame = time.perf_counter()
                request.frames.append(frames[row])
                if request.cursor is not None:
                    request.cursor.add(frames[row])
                if len(request.frames) >= request.limit:
                    self._end(request, request.limit_reason)
        for request in self._running:
            if request.generating and (request.cancelled.is_set() or request.limit == 0):
                self._end(request, CANCELLED if request.cancelled.is_set() else request.limit_reason)

    def _wait_for(self, event: torch.cuda.Event) -> None:
        """Wait for a frame; audio that lands meanwhile goes out at once rather than after the frame (a
        chunk decodes on its own stream while frames run)."""
        while self._audio_in_flight and not event.query():
            self._deliver(wait=False)
            time.sleep(AUDIO_POLL_S)
        event.synchronize()

    def _end(self, request: Request, reason: str) -> None:
        request.reason = reason

    def _retire(self) -> None:
        """Rows of requests that stopped generating leave the batch; the last row moves into each hole."""
        leaving = [r for r in self._running if not r.generating]
        if leaving:
            self._advance_now()  # rows move: the talker step runs over them as they were
        for request in leaving:
            hole, last = request.row, len(self._running) - 1
            if hole != last:
                moved = self._running[last]
                self.store.move(slice(hole, hole + 1), slice(last, last + 1),
                                filled=min(moved.prompt_len + moved.enqueued + 1, self.max_len))
                moved.row = hole
                self._running[hole] = moved
            self._running.pop()
            request.row = None
            if request.cursor is not None and request.reason != CANCELLED:
                request.cursor.cut(final=True)
                self._decoding.append(request)
            else:
                self._complete(request)

    def _decode(self) -> None:
        """Decode the chunks that are due, requests with pieces of the same size together: urgent pieces
        (first audio, the ramp, a live stream whose lead is thin) at once, steady ones when `_bulk_due` says
        so for any request."""
        for request in self._running:
            if request.cursor is not None:  # a row waiting for text: all its audio so far goes out now
                request.cursor.cut(final=not _advances(request))
        for request in self._decoding:
            if request.cancelled.is_set():
                request.cursor.pieces.clear()
        active = [r for r in self._running + self._decoding if r.cursor is not None and r.cursor.pieces]
        now = time.perf_counter()
        for request in active:  # a live stream (still generating, its text not all in) with a thin lead
            if (request.generating and request.text_open_loaded and request.first_audio is not None
                    and self._lead(request, now) < LEAD_URGENT_S):
                for piece in request.cursor.pieces:
                    piece.urgent = True
        if any(r.cursor.pieces[0].urgent for r in active):
            self._decode_rounds(URGENT, active)
        bulk = [r for r in active if r.cursor.pieces and not r.cursor.pieces[0].urgent]
        if any(self._bulk_due(r, now) for r in bulk):
            self._decode_rounds(BULK, bulk)
        self._complete_decoded()

    def _bulk_due(self, request: Request, now: float) -> bool:
        if not request.generating or len(request.cursor.pieces) >= BULK_PIECES or request.first_audio is None:
            return True
        return self._lead(request, now) < self.lead_low_s

    def _lead(self, request: Request, now: float) -> float:
        """Seconds of decoded audio ahead of playback (which starts at the request's first chunk)."""
        return request.audio_frames * self.frame_s - (now - request.first_audio)

    def _first_audio_first(self) -> None:
        """A request whose first chunk is decoding gets it before more frames are enqueued, so that the
        chunk has the GPU to itself, when every stream already playing is well ahead of playback; then
        the talker step `_enqueue_frame` held back for it."""
        waiting = {id(r) for r in self._running if r.first_audio is None and r.audio_in_flight}
        if waiting and self._streams_ahead():
            for event, request, _ in self._audio_in_flight:
                if id(request) in waiting and event is not None:
                    event.synchronize()
        self._advance_now()

    def _streams_ahead(self) -> bool:
        """Whether every stream already playing is well ahead of playback."""
        now = time.perf_counter()
        return all(self._lead(r, now) >= self.lead_low_s for r in self._running if r.first_audio is not None)

    def _advance_now(self) -> None:
        """Enqueue the talker step `_enqueue_frame` held back, if any."""
        if self._advance_due is not None:
            self._advance_due.advance()
            self._advance_due = None

    def _decode_rounds(self, lane: str, active: list[Request]) -> None:
        stage = self.decode_stage
        most = stage.max_count(lane)
        with stage.on_stream(lane):
            for _ in range(DECODE_ROUNDS):
                by_size: dict[int, list] = {}
                for request in active:
                    pieces = request.cursor.pieces
                    if pieces and pieces[0].urgent == (lane == URGENT):
                        piece = pieces.popleft()
                        if piece.reset:
                            stage.reset(request.decode_slot, lane)
                        by_size.setdefault(piece.codes.shape[0], []).append((request, piece))
                if not by_size:
                    break
                for items in by_size.values():
                    for first in range(0, len(items), most):
                        group = items[first: first + most]
                        audio = stage.decode(lane, [r.decode_slot for r, _ in group],
                                             torch.stack([p.codes for _, p in group]))
                        self.stats["decode_calls"][lane] += 1
                        self.stats["decode_rows"][lane] += len(group)
                        self._send_audio([(r, row, p.codes.shape[0]) for row, (r, p) in enumerate(group)
                                          if p.keep], audio)

    def _send_audio(self, rows: list[tuple[Request, int, int]], audio: torch.Tensor) -> None:
        """Copy decoded audio [m, samples] to the host (one copy, one event, on the current stream); rows
        (request, index, frames) get theirs when it lands."""
        if not rows:
            return
        cuda = self.device.type == "cuda"
        host = torch.empty(audio.shape, dtype=audio.dtype, pin_memory=cuda)
        host.copy_(audio, non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        for request, row, frames in rows:
            request.audio_in_flight += 1
            request.audio_frames += frames
            self._audio_in_flight.append((event, request, host[row]))

    def _deliver(self, wait: bool) -> None:
        """Hand out the audio that has landed, each request's in order (a chunk of one lane does not wait
        behind the other lane's); with `wait`, all of it, waiting as needed."""
        while self._audio_in_flight:
            if wait:
                event = self._audio_in_flight[0][0]
                if event is not None:
                    event.synchronize()
            landed: dict[int, bool] = {}
            held, remaining = set(), deque()
            for item in self._audio_in_flight:
                event, request, host = item
                if request not in held:
                    done = landed.get(id(event))
                    if done is None:
                        done = landed[id(event)] = event is None or event.query()
                    if done:
                        self._hand_out(request, host)
                        continue
                    held.add(request)
                remaining.append(item)
            self._audio_in_flight = remaining
            if not wait:
                break
        self._complete_decoded()

    def _hand_out(self, request: Request, host: torch.Tensor) -> None:
        self._progress_at = time.monotonic()
        request.audio_in_flight -= 1
        if request.first_audio is None:
            request.first_audio = time.perf_counter()
        if not request.cancelled.is_set():
            request.sink.put(host.numpy().copy())

    def _complete_decoded(self) -> None:
        for request in list(self._decoding):
            if not request.cursor.pieces and not request.audio_in_flight:
                self._decoding.remove(request)
                self._complete(request)

    def _complete(self, request: Request) -> None:
        if request.decode_slot is not None:
            self.decode_stage.release(request.decode_slot)
            request.decode_slot = None
        codes = torch.stack(request.frames) if request.frames else torch.zeros(0, 16, dtype=torch.long)
        first_audio = None if request.first_audio is None else request.first_audio - request.submitted
        first_frame = None if request.first_frame is None else request.first_frame - request.submitted
        request.sink.put(Finished(codes, request.reason, request.started - request.submitted, first_audio,
                                  first_frame))
        self.stats["reasons"][request.reason] += 1
        self._departures.append(time.perf_counter())

    def _finish_unstarted(self, request: Request) -> None:
        request.reason = CANCELLED
        request.sink.put(Finished(torch.zeros(0, 16, dtype=torch.long), CANCELLED, 0.0, None))
        self.stats["reasons"][CANCELLED] += 1

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            waiting = list(self._inbox)
            self._inbox.clear()
        for request in waiting + self._running + self._decoding:
            if request.decode_slot is not None:
                self.decode_stage.release(request.decode_slot)
                request.decode_slot = None
            request.reason = request.reason or "error"
            request.sink.put(error)
        self._running, self._decoding = [], []
        self._in_flight.clear()
        self._audio_in_flight.clear()


def _close_at_exit(engine_ref: weakref.ref) -> None:
    engine = engine_ref()
    if engine is not None:
        try:
            engine.close(timeout=5.0)
        except EngineStopped:  # stuck on the device: the process exits regardless
            pass


def _advances(request: Request) -> bool:
    """Whether the next frame advances `request`, as the frame decides it on the device: its track is
    closed, or it has text beyond the frames enqueued so far."""
    return request.generating and (not request.text_open_loaded or request.enqueued < request.text_loaded)


def _nearest_below(measured: dict[int, float], bucket: int) -> float | None:
    """The value of `bucket`, else of the largest measured bucket below it; None if there is none."""
    smaller = [b for b in measured if b <= bucket]
    return measured[max(smaller)] if smaller else None


def _prefill_length(tokens: int) -> int:
    """The cache rows a prompt of `tokens` positions takes: left-padded to a multiple of PREFILL_BUCKET."""
    return -(-tokens // PREFILL_BUCKET) * PREFILL_BUCKET


def _bucket(count: int, buckets: tuple[int, ...]) -> int:
    return next(b for b in buckets if b >= count)
