"""Server counters and latency histograms in the Prometheus text exposition format (no client library:
a handful of numbers)."""

from __future__ import annotations

import bisect
import gc
import threading
import time
from collections import Counter


SPEECH_ROUTE = "/v1/audio/speech"
# Seconds. First audio: from one frame on a GPU (~10 ms) to a request that waited behind others.
FIRST_AUDIO_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Whole requests: a short sentence to minutes of audio made slower than real time.
END_TO_END_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A young collection takes microseconds; a full one over a loaded model's objects, 0.1 s (what
# `qtts.freeze_loaded_heap` prevents).
GC_PAUSE_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)


class Histogram:
    """Counts of observations at or below each bucket's upper bound, as Prometheus keeps them.

    Observed from the event loop and from the engine's thread, so each observation takes a lock: a
    reentrant one, since a garbage collection (timed into `qtts_gc_pause_seconds`) can start inside any
    allocation, this histogram's own `render` included, and observe in the same thread."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help_text, self.buckets = name, help_text, buckets
        self._counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative; the last is above every bound
        self._sum = 0.0
        self._lock = threading.RLock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds

    def render(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*map(_number, self.buckets), "+Inf"), counts):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"{self.name}_sum {total:g}", f"{self.name}_count {cumulative}"]
        return lines


def _number(bound: float) -> str:
    return f"{bound:g}"


# Python's garbage collections in this process, timed: each holds the GIL, so the engine thread and every
# stream wait it out. One histogram per process (collections are), shared by every app in it.
GC_PAUSES = Histogram(
    "qtts_gc_pause_seconds", "Seconds each garbage collection of this process held the interpreter, stopping "
    "the engine for as long.", GC_PAUSE_BUCKETS)
_gc_started = 0.0


def _time_collection(phase: str, info: dict) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        GC_PAUSES.observe(time.perf_counter() - _gc_started)


gc.callbacks.append(_time_collection)


class Metrics:
    """Counted on the event loop; the engine's gauges are read when the page is rendered."""

    def __init__(self, engine, max_queue: int):
        self.engine, self.max_queue = engine, max_queue
        self.requests: Counter[str] = Counter()  # by route path template
        self.errors: Counter[int] = Counter()  # by HTTP status
        self.audio_seconds = 0.0
        self.time_to_first_audio = Histogram(
            "qtts_time_to_first_audio_seconds", "Seconds from a speech request's arrival to its first audio bytes.",
            FIRST_AUDIO_BUCKETS)
        self.end_to_end = Histogram(
            "qtts_request_duration_seconds", "Seconds from a speech request's arrival to its last audio bytes.",
            END_TO_END_BUCKETS)
        self.queue_wait = Histogram(
            "qtts_queue_wait_seconds", "Seconds a speech request waited for a free engine row.", QUEUE_WAIT_BUCKETS)
        self.text_to_audio = Histogram(
            "qtts_live_text_to_audio_seconds", "Seconds from the live text delta that started a segment's speech "
            "to its first audio sent.", FIRST_AUDIO_BUCKETS)

    def render(self) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: dict[str, float]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples.items())

        metric("qtts_requests_total", "counter", "HTTP requests answered, by endpoint.",
               {f'{{endpoint="{endpoint}"}}': n for endpoint, n in sorted(self.requests.items())})
        metric("qtts_request_errors_total", "counter", "Requests answered with an error, by HTTP status.",
               {f'{{status="{status}"}}': n for status, n in sorted(self.errors.items())})
        metric("qtts_audio_seconds_total", "counter", "Seconds of audio sent to clients.",
               {"": self.audio_seconds})
        stats = self.engine.stats
        metric("qtts_requests_running", "gauge", "Requests in the engine's batch.", {"": self.engine.running})
        metric("qtts_engine_stalled_seconds", "gauge",
               "Seconds the engine has had work in hand without getting any done (0: it is moving).",
               {"": round(self.engine.stalled_s(), 3)})
        metric("qtts_batch_capacity", "gauge", "Rows of the engine's batch.", {"": self.engine.max_batch})
        metric("qtts_queue_depth", "gauge", "Requests waiting for a free row.", {"": self.engine.queued})
        metric("qtts_queue_capacity", "gauge", "Most requests that may wait; one more is answered 503.",
               {"": self.max_queue})
        metric("qtts_frames_total", "counter", "Frames the engine ran (each for every running row).",
               {"": stats["frames"]})
        metric("qtts_prefill_seconds_total", "counter", "Host seconds spent enqueueing prefills.",
               {"": stats["prefill_s"]})
        metric("qtts_decode_calls_total", "counter", "Codec decoder calls, by lane (urgent: first audio).",
               {f'{{lane="{lane}"}}': n for lane, n in sorted(stats["decode_calls"].items())})
        metric("qtts_decode_rows_total", "counter", "Requests decoded by those calls, by lane.",
               {f'{{lane="{lane}"}}': n for lane, n in sorted(stats["decode_rows"].items())})
        metric("qtts_finished_requests_total", "counter", "Requests ended, by reason.",
               {f'{{reason="{reason}"}}': n for reason, n in sorted(stats["reasons"].items())})
        for histogram in (self.time_to_first_audio, self.end_to_end, self.queue_wait, self.text_to_audio,
                          GC_PAUSES):
            lines.extend(histogram.render())
        return "\n".join(lines) + "\n"


class RequestCounter:
    """ASGI middleware counting requests by route and errors by status, and timing successful speech
    responses from arrival to their first and last audio bytes.

    A plain ASGI wrapper rather than an `@app.middleware` function: those re-wrap streamed bodies and the
    receive channel, which would hide a client's disconnect from the handlers.
    """

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        status = 500  # what the client sees when the app fails before starting a response
        first_audio_seen = False

        async def send_and_observe(message):
            nonlocal status, first_audio_seen
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200 and _route(scope) == SPEECH_ROUTE:
                if message.get("body") and not first_audio_seen:
                    first_audio_seen = True
                    self.metrics.time_to_first_audio.observe(time.monotonic() - arrived)
                if not message.get("more_body", False):
                    self.metrics.end_to_end.observe(time.monotonic() - arrived)
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            self.metrics.requests[_route(scope)] += 1
            if status >= 400:
                self.metrics.errors[status] += 1


def _route(scope) -> str:
    route = scope.get("route")  # set by the router on this same scope when a route matched
    return getattr(route, "path", "unmatched")
