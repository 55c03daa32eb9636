"""Server counters in the Prometheus text exposition format (no client library: a handful of numbers)."""

from __future__ import annotations

from collections import Counter

from .worker import SynthesisWorker


class Metrics:
    """Counted on the event loop; the worker's gauges are read when the page is rendered."""

    def __init__(self, worker: SynthesisWorker):
        self.worker = worker
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
        metric("qtts_requests_in_flight", "gauge", "Model jobs waiting or running.",
               {"": self.worker.in_flight})
        metric("qtts_queue_depth", "gauge", "Model jobs waiting for the worker.", {"": self.worker.queued})
        metric("qtts_queue_capacity", "gauge", "Most model jobs that may wait; one more is answered 503.",
               {"": self.worker.max_queue})
        metric("qtts_cancelled_jobs_total", "counter",
               "Model jobs stopped early or skipped: their client left, or the server stopped.",
               {"": self.worker.cancelled_jobs})
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
