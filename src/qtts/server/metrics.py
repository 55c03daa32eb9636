"""Server counters in the Prometheus text exposition format (no client library: a handful of numbers)."""

from __future__ import annotations

from collections import Counter



class Metrics:
    """Counted on the event loop; the engine's gauges are read when the page is rendered."""

    def __init__(self, engine, max_queue: int):
        self.engine, self.max_queue = engine, max_queue
        self.requests: Counter[str] = Counter()  # by route path template
        self.errors: Counter[int] = Counter()  # by HTTP status
        self.audio_seconds = 0.0

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
        metric("qtts_batch_capacity", "gauge", "Rows of the engine's batch.", {"": self.engine.max_batch})
        metric("qtts_queue_depth", "gauge", "Requests waiting for a free row.", {"": self.engine.queued})
        metric("qtts_queue_capacity", "gauge", "Most requests that may wait; one more is answered 503.",
               {"": self.max_queue})
        metric("qtts_frames_total", "counter", "Frames the engine ran (each for every running row).",
               {"": stats["frames"]})
        metric("qtts_prefill_seconds_total", "counter", "Host seconds spent enqueueing prefills.",
               {"": stats["prefill_s"]})
        metric("qtts_finished_requests_total", "counter", "Requests ended, by reason.",
               {f'{{reason="{reason}"}}': n for reason, n in sorted(stats["reasons"].items())})
        return "\n".join(lines) + "\n"


class RequestCounter:
    """ASGI middleware counting requests by route and errors by status.

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
        status = 500  # what the client sees when the app fails before starting a response

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")  # set by the router on this same scope when a route matched
            self.metrics.requests[getattr(route, "path", "unmatched")] += 1
            if status >= 400:
                self.metrics.errors[status] += 1
