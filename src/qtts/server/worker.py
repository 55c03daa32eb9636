"""The one thread that runs the model: requests wait in a bounded queue and are served one after another.

A `TTS` is not thread-safe and generation is long and compute bound, so it runs on a dedicated thread;
the event loop stays free to accept requests, stream bytes and notice clients that hang up. Results
cross back to the loop through a per-job asyncio queue. A cancelled job stops at its next result, so a
client that leaves frees the worker within one chunk.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import InputError


class QueueFull(Exception):
    """The waiting queue is at capacity (answer 503 and ask the client to retry)."""


class JobCancelled(Exception):
    """The job was cancelled (its client left, or the server is stopping) before it finished."""


class _Failed:
    """Wraps an exception raised by a job, so a result that happens to be an exception is not mistaken for it."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Job:
    """One request's work: `produce()` returns an iterable of results, made on the worker thread.

    Consume it on the event loop with `async for`; it raises what `produce` raised.
    """

    def __init__(self, produce: Callable[[], Iterable[Any]], loop: asyncio.AbstractEventLoop,
                 withdraw: Callable[[Job], None]):
        self._produce = produce
        self._loop = loop
        self._withdraw = withdraw  # takes the job out of the waiting queue, if it is still there
        self._results: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop this job at its next result; a job still waiting leaves the queue at once (its slot is free)."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._withdraw(self)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __aiter__(self) -> Job:
        return self

    async def __anext__(self) -> Any:
        item = await self._results.get()
        if item is _END:
            self._results.put_nowait(_END)  # later reads end too
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            self._results.put_nowait(item)
            raise item.error
        return item

    # -- worker side --------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Produce every result (on the worker thread); return False when the job was cancelled."""
        if self.cancelled:
            self.refuse()
            return False
        try:
            results = iter(self._produce())
            try:
                for item in results:
                    if self.cancelled:
                        break
                    self._send(item)
            finally:
                # A generator stops generating here, not whenever it is garbage collected.
                close = getattr(results, "close", None)
                if close is not None:
                    close()
        except Exception as exc:  # every failure goes back to the request that caused it
            self._send(_Failed(exc))
            return True
        if self.cancelled:
            self.refuse()
            return False
        self._send(_END)
        return True

    def refuse(self) -> None:
        """Answer JobCancelled, for whoever still listens (a request waiting while the server stops)."""
        self._send(_Failed(JobCancelled()))

    def _send(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._results.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()


class SynthesisWorker:
    """Runs jobs one at a time on its own thread; at most `max_queue` jobs wait behind the running one."""

    def __init__(self, max_queue: int):
        if max_queue < 1:
            raise InputError(f"max_queue must be at least 1, got {max_queue}")
        self.max_queue = max_queue
        self.cancelled_jobs = 0  # jobs stopped or skipped because they were cancelled
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._stopping = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="qtts-synthesis", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job (waiting ones are answered with JobCancelled) and let the thread finish."""
        with self._condition:
            self._stopping = True
            for job in list(self._waiting):
                job.cancel()
            if self._running is not None:
                self._running.cancel()
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, produce: Callable[[], Iterable[Any]]) -> Job:
        """Queue `produce` (call from the event loop); raise QueueFull when the queue is at capacity."""
        job = Job(produce, asyncio.get_running_loop(), self._withdraw)
        with self._condition:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(job)
            self._condition.notify()
        return job

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Jobs waiting or running."""
        with self._condition:
            return len(self._waiting) + (self._running is not None)

    def _withdraw(self, job: Job) -> None:
        with self._condition:
            if job not in self._waiting:
                return  # running (it stops at its next result) or done
            self._waiting.remove(job)
            self.cancelled_jobs += 1
        job.refuse()

    def _serve(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if not self._waiting:
                    return
                job = self._running = self._waiting.popleft()
            completed = False
            try:
                completed = job.run()
            finally:
                with self._condition:
                    self._running = None
                    if not completed:
                        self.cancelled_jobs += 1
