"""`WS /v1/audio/speech/stream`: speech for text that arrives while it is spoken (an LLM's answer as it is
written), with vLLM-Omni's message names.

A session is configured once (voice, language, sampling, format) and then carries any number of
utterances: text deltas of any size, optional flushes, and an end of input each. An utterance is spoken as
consecutive segments cut at sentence (or clause) ends (`SegmentBuffer`). A segment is one engine request
whose text track grows as the text comes (`TextStream`): its speech starts as soon as its first word has
ended, each later word joins it once the word after it has begun, and the request waits in the batch
when it has spoken all it has. Segments are spoken one after another, in order, while the client keeps
sending text; the next segment's speech is made while the current one plays, and later ones wait for
their turn (a session holds at most two engine rows, however fast its text comes).

    client -> server (JSON text messages)
        {"type": "session.config", "voice": ..., "language": ..., ...}   first; again between utterances
        {"type": "input.text", "text": "..."}                             a delta of the current utterance
        {"type": "input.flush"}                                           end the current segment now
        {"type": "input.done"}                                            end of this utterance's text
        {"type": "session.close"}                                         finish speaking, then close
    server -> client
        {"type": "session.started" | "session.updated", "config": {...}, "sample_rate": 24000}
        {"type": "audio.start", "utterance_index", "sentence_index", "sentence_text", "format", "sample_rate"}
            (sentence_text: the segment's text received so far; its speech starts before the sentence ends)
        binary frames: the segment's audio (pcm, or wav: one streaming header at the start of each utterance)
        {"type": "audio.done", "utterance_index", "sentence_index", "sentence_text", "frames", "samples",
         "total_bytes", "text_to_audio_ms", "error"}
            (sentence_text: the whole segment; text_to_audio_ms: from the text delta that started the
            segment's speech, or the end of the segment before it if that came later, to its first audio
            sent)
        {"type": "session.done", "utterance_index", "total_sentences", "frames", "samples"}   utterance over
        {"type": "error", "error": {"message", "type", "param", "code"}}   the HTTP API's error shape

A bad message is answered with an error event and otherwise ignored (a refused delta changes nothing):
the session stays open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from ..audio import SAMPLE_RATE, SAMPLES_PER_FRAME, Audio
from ..audio_formats import FORMATS, StreamEncoder
from ..engine.requests import Generation
from ..incremental import TextStream
from ..text_segments import DEFAULT_MAX_CHARS, SegmentBuffer
from .schemas import ApiError, LiveSessionConfig, SpeechRequest, api_error

logger = logging.getLogger(__name__)

PATH = "/v1/audio/speech/stream"

# (request of a session, less its text) -> the keywords of its segments; raises ApiError for what is wrong.
Prepare = Callable[[SpeechRequest], dict[str, Any]]
# A segment's text, as it will be spoken -> raises ApiError if it may not be (control tokens, limits).
CheckText = Callable[[str], None]
# keywords -> a TextStream delivering to the running event loop; raises ApiError (busy, bad request).
OpenText = Callable[[dict[str, Any]], TextStream]
# a started segment's request -> its audio as made; raises ApiError. With OpenText, the one place live
# speech reaches the engine.
Speak = Callable[[Generation], AsyncIterator[Audio]]


def add_live_speech(app: FastAPI, prepare: Prepare, check_text: CheckText, open_text: OpenText, speak: Speak,
                    observe_text_to_audio: Callable[[float], None], *, max_input_chars: int,
                    max_segment_chars: int = DEFAULT_MAX_CHARS) -> None:
    """Serve live speech sessions at PATH on `app`; `observe_text_to_audio(seconds)` is told each segment's
    time from text to first audio."""

    async def live_speech(websocket: WebSocket) -> None:
        await websocket.accept()
        session = LiveSession(websocket, prepare, check_text, open_text, speak, max_input_chars,
                              max_segment_chars, observe_text_to_audio)
        await session.run()

    app.add_api_websocket_route(PATH, live_speech, name="live_speech")


# Segments of a session whose requests may run at once: the one being spoken and the next (made while the
# first plays), however fast the text comes.
RUNNING_SEGMENTS = 2
# Characters a session may have received and not yet spoken (about 20 minutes of English speech): what a
# client that sends text faster than it is spoken can make the server hold.
MAX_WAITING_CHARS = 20_000


@dataclass(eq=False)
class _Segment:
    """One segment of an utterance: the text received for it, and its request's text stream once it may
    run. `started`: its speech can be awaited (the request exists, or the segment ended or failed)."""

    utterance: int
    index: int
    arguments: dict[str, Any]
    response_format: str
    known: str = ""  # its text received so far: its settled words, or all of it once it ended
    ended: bool = False
    stream: TextStream | None = None
    given: str = ""  # what of `known` the stream has (perhaps with the whitespace after its end)
    error: ApiError | None = None  # its speech was refused
    text_at: float | None = None  # when its request started (the delta that ended its first word, or
    # its turn to run, whichever came last)
    started: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _UtteranceEnd:
    utterance: int
    segments: int


_CLOSE = object()


class LiveSession:
    """One WebSocket connection: a receiver reading the client's messages and feeding their text to the
    current segment's request, and a speaker task sending the segments' audio in order."""

    def __init__(self, websocket: WebSocket, prepare: Prepare, check_text: CheckText, open_text: OpenText,
                 speak: Speak, max_input_chars: int, max_segment_chars: int,
                 observe_text_to_audio: Callable[[float], None]):
        self.websocket = websocket
        self.prepare, self.check_text, self.open_text, self.speak = prepare, check_text, open_text, speak
        self.max_input_chars = max_input_chars
        self.max_segment_chars = max_segment_chars
        self.observe_text_to_audio = observe_text_to_audio
        self.config: LiveSessionConfig | None = None
        self.arguments: dict[str, Any] = {}
        self.buffer = self._new_buffer("sentence")
        self.utterance = 0
        self.segments = 0  # opened so far in the current utterance
        self.current: _Segment | None = None  # the segment the utterance's text goes to now
        self.unsaid: list[_Segment] = []  # opened and not yet spoken to the end: cancelled if the client leaves
        self.open = False  # an utterance has text and has not been ended
        self.queue: asyncio.Queue = asyncio.Queue()
        self._send_lock = asyncio.Lock()  # one message at a time from both tasks

    def _new_buffer(self, granularity: str) -> SegmentBuffer:
        # "last": every word that has ended belongs to the current segment, so it can be spoken at once
        return SegmentBuffer(max_chars=self.max_segment_chars, granularity=granularity, overflow="last")

    async def run(self) -> None:
        speaker = asyncio.create_task(self._speak_queued())
        speaker.add_done_callback(self._speaker_ended)
        try:
            if await self._receive_all():
                self.queue.put_nowait(_CLOSE)
                await speaker  # session.close: everything committed is said before the socket closes
                await self.websocket.close()
        except WebSocketDisconnect:
            pass
        finally:
            for segment in self.unsaid:  # a client gone mid-utterance: its requests leave the batch
                if segment.stream is not None:
                    segment.stream.cancel()
            speaker.cancel()
            try:
                await speaker
            except (asyncio.CancelledError, WebSocketDisconnect):
                pass
            except Exception:  # a send after the client left fails in ways that depend on the ASGI server
                logger.debug("live speech session ended while sending", exc_info=True)

    def _speaker_ended(self, task: asyncio.Task) -> None:
        """A speaking task that failed must not leave the client waiting for audio that never comes."""
        if task.cancelled() or task.exception() is None:
            return
        logger.error("live speech session failed", exc_info=task.exception())
        asyncio.ensure_future(self._close_after_failure())

    async def _close_after_failure(self) -> None:
        try:
            await self._error(ApiError(500, "internal error while speaking; see the server log",
                                       code="internal_error"))
            await self.websocket.close(code=1011)
        except Exception:  # the client may be gone already
            logger.debug("could not report a failed live speech session", exc_info=True)

    # -- receiving ----------------------------------------------------------------------------------------
    async def _receive_all(self) -> bool:
        """Handle messages until the client leaves (False) or asks to close (True)."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return False
            if message.get("text") is None:
                await self._error(ApiError(400, "binary messages are not accepted: send JSON text messages "
                                           "such as {\"type\": \"input.text\", \"text\": \"Hello\"}",
                                           code="invalid_message"))
                continue
            try:
                if await self._handle(message["text"]):
                    return True
            except ApiError as exc:
                await self._error(exc)

    async def _handle(self, raw: str) -> bool:
        if len(raw) > self.max_input_chars + 1024:
            raise ApiError(400, f"message is {len(raw)} characters; send text in deltas of at most "
                           f"{self.max_input_chars} characters", code="message_too_large")
        try:
            message = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"message is not valid JSON: {exc}", code="invalid_message") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if not isinstance(kind, str):
            raise ApiError(400, "each message is a JSON object with a \"type\" (session.config, input.text, "
                           "input.flush, input.done or session.close)", code="invalid_message", param="type")
        if kind == "session.config":
            await self._configure({key: value for key, value in message.items() if key != "type"})
            return False
        if kind == "session.close":
            if self.open:
                self._end_utterance()
            return True
        if kind not in ("input.text", "input.flush", "input.done"):
            raise ApiError(400, f"unknown message type {kind!r}; expected session.config, input.text, "
                           "input.flush, input.done or session.close", code="invalid_message", param="type")
        if self.config is None:
            raise ApiError(400, f"{kind} before session.config: configure the session first (voice, "
                           "language, response_format)", code="session_not_configured")
        if kind == "input.text":
            self._add_text(message)
        elif kind == "input.flush":
            self._take(self.buffer.flush())
        else:
            self._end_utterance()
        return False

    async def _configure(self, fields: dict[str, Any]) -> None:
        if self.open:
            raise ApiError(400, "session.config arrived while an utterance is in progress; send input.done "
                           "first, then the new config", code="utterance_in_progress")
        try:
            config = LiveSessionConfig.model_validate(fields)
        except ValidationError as exc:
            raise _config_error(exc) from None
        self.arguments = self.prepare(config.speech_request())
        self.buffer = self._new_buffer(config.split_granularity)
        kind = "session.started" if self.config is None else "session.updated"
        self.config = config
        await self._send_json({"type": kind, "config": config.model_dump(exclude_none=True),
                               "sample_rate": SAMPLE_RATE})

    def _add_text(self, message: dict) -> None:
        text = message.get("text")
        if not isinstance(text, str):
            raise ApiError(400, "input.text needs \"text\", a string", code="invalid_message", param="text")
        if len(text) > self.max_input_chars:
            raise ApiError(400, f"input.text is {len(text)} characters; send deltas of at most "
                           f"{self.max_input_chars}", code="input_too_long", param="text")
        waiting = len(self.buffer.pending) + sum(len(s.known) for s in self.unsaid if s is not self.current)
        if waiting + len(text) > MAX_WAITING_CHARS:
            raise ApiError(400, f"{waiting} characters of this session are waiting to be spoken and it holds at "
                           f"most {MAX_WAITING_CHARS}: send more once some of it has been spoken",
                           code="input_backlog_full", param="text")
        # Checked before anything changes, segment by segment as the text will be spoken (the held text is
        # the start of the current segment; no control token has a segment boundary inside it).
        ended, held = self.buffer.preview(text)
        for part in ended + [held]:
            self.check_text(part)
        if text:
            self.open = True
        self._take(self.buffer.feed(text))

    def _take(self, ended: list[str]) -> None:
        """Give the segments that `ended` their whole text, and the current one what is settled of it."""
        for text in ended:
            self._give(text, final=True)
        settled = self.buffer.settled()
        if settled.strip():
            self._give(settled, final=False)

    def _give(self, text: str, final: bool) -> None:
        """`text`: the current segment's text from its start (all of it when `final`)."""
        segment = self.current
        if segment is None:
            segment = self.current = _Segment(self.utterance, self.segments, self.arguments,
                                              self.config.response_format)
            self.segments += 1
            self.unsaid.append(segment)
            self.queue.put_nowait(segment)
        segment.known = text
        if final:
            segment.ended = True
            self.current = None
        self._run(segment)

    def _run(self, segment: _Segment) -> None:
        """Bring a segment's request up to date with its text, if it may run (RUNNING_SEGMENTS). A refusal
        (busy, the engine's limits, shutdown) becomes the segment's error, reported when it is spoken."""
        if segment.error is not None or segment not in self.unsaid[:RUNNING_SEGMENTS]:
            return
        try:
            if segment.stream is None:
                segment.stream = self.open_text(segment.arguments)
            # What was given is the start of `known`, or (when the segment ended at its last word) `known`
            # and the whitespace after it, which the stream does not speak.
            more = segment.known[len(segment.given):]
            if more:
                segment.stream.feed(more)
                segment.given += more
            if segment.ended:
                segment.stream.end()
        except Exception as exc:
            segment.error = api_error(exc)
            if segment.stream is not None:
                segment.stream.cancel()
            segment.started.set()
            return
        if segment.stream.generation is not None and segment.text_at is None:
            segment.text_at = time.perf_counter()
        if segment.stream.generation is not None or segment.ended:
            segment.started.set()

    def _run_next(self) -> None:
        """A segment was spoken: the one after the next may run now."""
        for segment in self.unsaid[:RUNNING_SEGMENTS]:
            self._run(segment)

    def _end_utterance(self) -> None:
        self._take(self.buffer.flush())
        if self.current is not None:  # the buffer held nothing to say after all
            self.current.ended = True
            self.current.error = ApiError(400, "this segment had nothing to say", code="invalid_input")
            self.current.started.set()
            self.current = None
        self.queue.put_nowait(_UtteranceEnd(self.utterance, self.segments))
        self.utterance += 1
        self.segments = 0
        self.open = False

    # -- speaking -----------------------------------------------------------------------------------------
    async def _speak_queued(self) -> None:
        encoder: StreamEncoder | None = None  # one per utterance: a wav header opens each
        frames = samples = 0
        while True:
            item = await self.queue.get()
            if item is _CLOSE:
                return
            if isinstance(item, _UtteranceEnd):
                if encoder is not None and (tail := encoder.finish()):
                    await self._send_bytes(tail)
                await self._send_json({"type": "session.done", "utterance_index": item.utterance,
                                       "total_sentences": item.segments, "frames": frames, "samples": samples})
                encoder, frames, samples = None, 0, 0
                continue
            if encoder is None:
                encoder = StreamEncoder(FORMATS[item.response_format], SAMPLE_RATE)
            said = await self._say(item, encoder)
            samples += said
            frames += math.ceil(said / SAMPLES_PER_FRAME)

    async def _say(self, segment: _Segment, encoder: StreamEncoder) -> int:
        """Send one segment's audio as it is made; return its sample count."""
        reached = time.perf_counter()  # the segment before it is all sent
        await segment.started.wait()
        where = {"utterance_index": segment.utterance, "sentence_index": segment.index}
        await self._send_json({"type": "audio.start", **where, "sentence_text": segment.known.strip(),
                               "format": segment.response_format, "sample_rate": SAMPLE_RATE})
        samples = sent = 0
        text_to_audio = None
        generation = None if segment.stream is None else segment.stream.generation
        error = segment.error
        try:
            if error is None and generation is None:  # cancelled before its first word
                error = ApiError(400, "this segment was cancelled before it was spoken", code="invalid_input")
            if error is None:
                async for audio in self.speak(generation):
                    data = encoder.encode(audio.samples)
                    samples += len(audio.samples)
                    sent += len(data)
                    if data:
                        await self._send_bytes(data)
                    if text_to_audio is None:
                        text_to_audio = time.perf_counter() - max(segment.text_at, reached)
                        self.observe_text_to_audio(text_to_audio)
        except ApiError as exc:
            error = exc
        finally:
            self.unsaid.remove(segment)
            self._run_next()
        if error is not None:
            await self._error(error, **where)
        await self._send_json({"type": "audio.done", **where, "sentence_text": segment.known.strip(),
                               "frames": math.ceil(samples / SAMPLES_PER_FRAME), "samples": samples,
                               "total_bytes": sent, "error": error is not None,
                               "text_to_audio_ms": None if text_to_audio is None else round(text_to_audio * 1e3, 1)})
        return samples

    # -- sending ------------------------------------------------------------------------------------------
    async def _send_json(self, payload: dict) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(payload, ensure_ascii=False))

    async def _send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.websocket.send_bytes(data)

    async def _error(self, error: ApiError, **where) -> None:
        await self._send_json({"type": "error", **where, **error.body()})


def _config_error(exc: ValidationError) -> ApiError:
    """One clear 400 for the first thing wrong with a session.config."""
    problems = exc.errors()
    first = problems[0]
    field = str(first["loc"][0]) if first["loc"] else None
    if first["type"] == "extra_forbidden":
        message = f"session.config has an unknown field {field!r}"
    else:
        message = f"session.config {field}: {first['msg']}" if field else f"session.config: {first['msg']}"
    return ApiError(400, message, code="invalid_request", param=field)
