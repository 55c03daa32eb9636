"""`WS /v1/audio/speech/stream`: speech for text that arrives while it is spoken (an LLM's answer as it is
written), with vLLM-Omni's message names.

A session is configured once (voice, language, sampling, format) and then carries any number of
utterances: text deltas of any size, optional flushes, and an end of input each. Text is committed to
speech a segment at a time (`SegmentBuffer`: at each sentence or clause end, on flush, on end), and the
segments of a session are spoken one after another, in order, while the client keeps sending text.

    client -> server (JSON text messages)
        {"type": "session.config", "voice": ..., "language": ..., ...}   first; again between utterances
        {"type": "input.text", "text": "..."}                             a delta of the current utterance
        {"type": "input.flush"}                                           speak what is buffered now
        {"type": "input.done"}                                            end of this utterance's text
        {"type": "session.close"}                                         finish speaking, then close
    server -> client
        {"type": "session.started" | "session.updated", "config": {...}, "sample_rate": 24000}
        {"type": "audio.start", "utterance_index", "sentence_index", "sentence_text", "format", "sample_rate"}
        binary frames: the segment's audio (pcm, or wav: one streaming header at the start of each utterance)
        {"type": "audio.done", "utterance_index", "sentence_index", "frames", "samples", "total_bytes", "error"}
        {"type": "session.done", "utterance_index", "total_sentences", "frames", "samples"}   utterance over
        {"type": "error", "error": {"message", "type", "param", "code"}}   the HTTP API's error shape

A bad message is answered with an error event and otherwise ignored: the session stays open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from ..audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from ..text_segments import DEFAULT_MAX_CHARS, SegmentBuffer
from ..audio_formats import FORMATS, StreamEncoder
from .schemas import ApiError, LiveSessionConfig, SpeechRequest

logger = logging.getLogger(__name__)

PATH = "/v1/audio/speech/stream"

# (request of a session, less its text) -> synthesize() keywords; raises ApiError for what is wrong with it.
Prepare = Callable[[SpeechRequest], dict[str, Any]]
# (segment text, keywords) -> its audio chunks as made; raises ApiError. The one place live speech
# reaches the engine.
Speak = Callable[[str, dict[str, Any]], AsyncIterator[Any]]


def add_live_speech(app: FastAPI, prepare: Prepare, speak: Speak, *, max_input_chars: int,
                    max_segment_chars: int = DEFAULT_MAX_CHARS) -> None:
    """Serve live speech sessions at PATH on `app`."""

    async def live_speech(websocket: WebSocket) -> None:
        await websocket.accept()
        await LiveSession(websocket, prepare, speak, max_input_chars, max_segment_chars).run()

    app.add_api_websocket_route(PATH, live_speech, name="live_speech")


@dataclass(frozen=True)
class _Segment:
    utterance: int
    index: int
    text: str
    arguments: dict[str, Any]
    response_format: str


@dataclass(frozen=True)
class _UtteranceEnd:
    utterance: int
    segments: int


_CLOSE = object()


class LiveSession:
    """One WebSocket connection: a receiver reading the client's messages, and a speaker task saying the
    committed segments in order, so text keeps arriving while audio is being made."""

    def __init__(self, websocket: WebSocket, prepare: Prepare, speak: Speak, max_input_chars: int,
                 max_segment_chars: int):
        self.websocket = websocket
        self.prepare = prepare
        self.speak = speak
        self.max_input_chars = max_input_chars
        self.max_segment_chars = max_segment_chars
        self.config: LiveSessionConfig | None = None
        self.arguments: dict[str, Any] = {}
        self.buffer = SegmentBuffer(max_chars=max_segment_chars)
        self.utterance = 0
        self.segments = 0  # committed so far in the current utterance
        self.open = False  # an utterance has text and has not been ended
        self.queue: asyncio.Queue = asyncio.Queue()
        self._send_lock = asyncio.Lock()  # one message at a time from both tasks

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
            speaker.cancel()  # a client gone mid-utterance: the running segment stops at its next chunk
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
            self._commit(self.buffer.flush())
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
        self.buffer = SegmentBuffer(max_chars=self.max_segment_chars, granularity=config.split_granularity)
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
        if text:
            self.open = True
        self._commit(self.buffer.feed(text))

    def _end_utterance(self) -> None:
        self._commit(self.buffer.flush())
        self.queue.put_nowait(_UtteranceEnd(self.utterance, self.segments))
        self.utterance += 1
        self.segments = 0
        self.open = False

    def _commit(self, texts: list[str]) -> None:
        for text in texts:
            self.queue.put_nowait(_Segment(self.utterance, self.segments, text, self.arguments,
                                           self.config.response_format))
            self.segments += 1

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
        where = {"utterance_index": segment.utterance, "sentence_index": segment.index}
        await self._send_json({"type": "audio.start", **where, "sentence_text": segment.text,
                               "format": segment.response_format, "sample_rate": SAMPLE_RATE})
        samples = sent = 0
        failed = False
        try:
            async for audio in self.speak(segment.text, segment.arguments):
                data = encoder.encode(audio.samples)
                samples += len(audio.samples)
                sent += len(data)
                if data:
                    await self._send_bytes(data)
        except ApiError as exc:
            failed = True
            await self._error(exc, **where)
        await self._send_json({"type": "audio.done", **where, "frames": math.ceil(samples / SAMPLES_PER_FRAME),
                               "samples": samples, "total_bytes": sent, "error": failed})
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
