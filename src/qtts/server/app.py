"""The OpenAI-compatible HTTP layer over one loaded `TTS`: speech, voices, models, health and metrics, plus
live speech over a WebSocket (live.py) and the web page at / (page.py).

Handlers check what only the server knows (model name, voice ids, formats, limits), submit the model work
to the TTS's engine (one continuous-batching scheduler for every request), and turn its audio into bytes.
Nothing here runs the model itself.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from .. import __version__
from ..audio import SAMPLE_RATE, SAMPLES_PER_FRAME, Audio
from ..audio_formats import DEFAULT_FORMAT, FORMATS, AudioFormat, StreamEncoder, encode
from ..engine.requests import Generation
from ..errors import InputError
from ..limits import check_text
from .guards import CLIENT_TIMEOUT, add_guards
from .live import add_live_speech
from .metrics import Metrics, RequestCounter
from .page import add_page
from .request_body import MAX_UPLOAD_BYTES
from .schemas import (
    RETRY_AFTER_SECONDS,
    ApiError,
    SpeechRequest,
    api_error,
    audio_delta_event,
    audio_done_event,
    error_event,
    preset_voice_object,
    voice_deleted,
    voice_object,
)
from .voice_store import MAX_VOICES, StoredVoice, VoiceStore

logger = logging.getLogger(__name__)

MAX_INPUT_CHARS = 4096  # OpenAI's limit for one speech request
DEFAULT_MAX_QUEUE = 64  # requests waiting for a free engine row before new ones get 503
# Seconds a request may be expected to wait for a free engine row before it is refused (503) instead.
FIRST_AUDIO_TARGET = 1.0
# Seconds an engine with work in hand may go without finishing any of it before the server calls it stuck.
# Long enough for the slowest legitimate pause (an eager prefill of a full cache takes about a second).
STALL_LIMIT = 30.0
# Model names OpenAI clients are configured with; they all mean "the model this server runs".
OPENAI_TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer; only logs ever see it


def create_app(tts, *, model_name: str | None = None, voices_dir: str | Path | None = None,
               max_queue: int = DEFAULT_MAX_QUEUE, max_input_chars: int = MAX_INPUT_CHARS,
               max_voices: int = MAX_VOICES, api_key: str | None = None, cors_origins: Sequence[str] = (),
               client_timeout: float = CLIENT_TIMEOUT, first_audio_target: float = FIRST_AUDIO_TARGET,
               stall_limit: float = STALL_LIMIT) -> FastAPI:
    """A FastAPI app serving `tts` (a `qtts.TTS`): every request runs in its engine, many at once.

    `model_name` is the id clients send and `/v1/models` lists (default: the checkpoint's name);
    `voices_dir` keeps cloned voices across restarts (Base models), at most `max_voices` of them.
    Admission: a request is answered 503 (with Retry-After) when taking it would make the engine's frames
    fall behind the audio they make, when it would wait for a free row longer than `first_audio_target`
    seconds (at the rate requests have been finishing), or when `max_queue` requests already wait. With
    `api_key`, every `/v1/` request must carry it as a Bearer token; `cors_origins` may call from
    browsers; a client gets `client_timeout` seconds for its headers and for each piece of its body.
    An engine that has had work in hand for `stall_limit` seconds without getting any done is stuck:
    `/health` and `/ready` then answer 503 (an orchestrator restarts the server; Ray Serve replaces the
    replica) and new requests get 503 instead of joining a queue that does not move.
    """
    served_name = model_name or tts.checkpoint.name
    engine = tts.engine
    metrics = Metrics(engine, max_queue)
    open_generations: set[Generation] = set()
    shutting_down = asyncio.Event()
    is_base = tts.model_type == "base"
    if voices_dir is not None and not is_base:
        logger.warning("ignoring voices_dir: voices are for Base models and this is a %s model", tts.model_type)
    voices = VoiceStore(voices_dir if is_base else None, hidden_size=tts.hidden_size, max_voices=max_voices)
    started = int(time.time())
    max_new_tokens = tts.checkpoint.generation.max_new_tokens

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:  # the engine belongs to the TTS: stop only this app's requests
            shutting_down.set()
            for generation in list(open_generations):
                generation.cancel()

    app = FastAPI(title="qtts", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible speech synthesis with Qwen3-TTS")
    add_guards(app, api_key=api_key, cors_origins=cors_origins, client_timeout=client_timeout)
    app.add_middleware(RequestCounter, metrics=metrics)  # outermost: it counts what the guards refuse too
    _add_error_handlers(app)

    def stalled() -> str | None:
        """Why the engine cannot take requests, if it has been stuck for `stall_limit` seconds."""
        seconds = engine.stalled_s()
        if seconds < stall_limit:
            return None
        return f"the engine has made no progress for {seconds:.0f} s with requests in hand"

    def check_room_in_engine() -> None:
        """Admission (see above): 503 with Retry-After for a request that would harm the running streams,
        miss its first-audio target, or overflow the queue, or that a stuck engine would never run."""
        stuck = stalled()
        if stuck is not None:
            raise ApiError(503, f"the server cannot take requests: {stuck}", code="engine_stalled")
        retry_after = engine.admission_delay(first_audio_target)
        if retry_after is None and engine.running + engine.queued >= engine.max_batch + max_queue:
            retry_after = RETRY_AFTER_SECONDS
        if retry_after is not None:
            raise ApiError(503, f"the server is busy ({engine.running} requests running, {engine.queued} "
                           "waiting); retry in a moment", code="server_busy",
                           headers={"Retry-After": str(max(RETRY_AFTER_SECONDS, math.ceil(retry_after)))})

    def submit(arguments: dict) -> Generation:
        check_room_in_engine()
        try:
            generation = tts.submit(loop=asyncio.get_running_loop(), **arguments)
        except Exception as exc:
            raise api_error(exc) from None
        open_generations.add(generation)
        return generation

    def done(generation: Generation) -> None:
        """The request's handler is finished with it: forget it, and count how long it waited for a row."""
        open_generations.discard(generation)
        if generation.finished is not None and generation.finished.reason != "error":
            metrics.queue_wait.observe(generation.finished.queued_s)

    # -- speech -------------------------------------------------------------------------------------------
    def check_model(name: str | None) -> None:
        if name is None or name == served_name or name in OPENAI_TTS_MODELS or name.startswith("gpt-4o-mini-tts"):
            return
        raise ApiError(404, f"model {name!r} is not served here; this server runs {served_name!r}",
                       code="model_not_found", param="model")

    def voice_arguments(body: SpeechRequest) -> dict[str, Any]:
        """The synthesize() keywords that pick the voice, by model type."""
        voice_id = body.voice_id
        if is_base:
            if body.instructions:
                raise ApiError(400, "instructions are not supported by a Base (voice clone) model",
                               code="unsupported_parameter", param="instructions")
            if not voice_id:
                raise ApiError(400, "voice is required: the id of a voice made with POST /v1/voices",
                               code="voice_not_found", param="voice")
            stored = voices.get(voice_id)
            if stored is None:
                raise ApiError(400, f"unknown voice {voice_id!r}; make one with POST /v1/voices "
                               "(GET /v1/voices lists them)", code="voice_not_found", param="voice")
            return {"voice": stored.voice}
        if tts.model_type == "custom_voice":
            if not voice_id or voice_id.lower() not in tts.speakers:
                given = f"unknown voice {voice_id!r}" if voice_id else "voice is required"
                raise ApiError(400, f"{given}; this model's speakers are: {', '.join(tts.speakers)}",
                               code="voice_not_found", param="voice")
            return {"speaker": voice_id, "instruct": body.instructions}
        return {"instruct": body.instructions}  # VoiceDesign: the instructions are the voice

    def check_speech(body: SpeechRequest) -> AudioFormat:
        if len(body.input) > max_input_chars:
            raise ApiError(400, f"input is {len(body.input)} characters; the limit is {max_input_chars}. "
                           "Split the text and send the parts one by one.", code="input_too_long", param="input")
        # TTS.plan checks these too; checked here they are named as the request names them.
        check_field("input", body.input, tts.limits.input_tokens)
        if body.instructions:  # OpenAI clients send "" for none
            check_field("instructions", body.instructions, tts.limits.instructions_tokens)
        return check_options(body)

    def check_field(field: str, text: str, max_tokens: int) -> None:
        """Limits and control tokens of a text field, as a 400 naming the field."""
        try:
            check_text(tts.tokenizer, field, text, max_tokens)
        except InputError as exc:
            raise ApiError(400, str(exc), code="invalid_input", param=field) from None

    def check_options(body: SpeechRequest) -> AudioFormat:
        """Everything about a speech request but its text."""
        check_model(body.model)
        name = (body.response_format or DEFAULT_FORMAT).lower()
        if name not in FORMATS:
            raise ApiError(400, f"response_format {name!r} is not supported here; choose one of: "
                           f"{', '.join(FORMATS)}", code="unsupported_format", param="response_format")
        if body.speed != 1.0:
            raise ApiError(400, f"speed {body.speed:g} is not supported: qtts speaks at the model's own pace "
                           "(speed 1.0)", code="unsupported_value", param="speed")
        if body.max_new_tokens is not None and body.max_new_tokens > max_new_tokens:
            # Caches are sized by this bound up front: an absurd value would exhaust memory, not just time.
            raise ApiError(400, f"max_new_tokens {body.max_new_tokens} exceeds this server's limit of "
                           f"{max_new_tokens} frames (the checkpoint's generation_config.json)",
                           code="unsupported_value", param="max_new_tokens")
        for field, value in body.sampling().items():  # one at a time, so that a 400 names its field
            try:
                tts.sampling_params(**{field: value})
            except InputError as exc:
                raise ApiError(400, str(exc), code="invalid_input", param=field) from None
        if body.language.lower() not in tts.languages:
            raise ApiError(400, f"unsupported language {body.language!r}; choose one of: "
                           f"{', '.join(tts.languages)}", code="unsupported_language", param="language")
        return FORMATS[name]

    @app.post("/v1/audio/speech", summary="Speech for text (OpenAI's create speech)")
    async def speech(body: SpeechRequest, request: Request):
        fmt = check_speech(body)
        arguments = {"text": body.input, "language": body.language, **voice_arguments(body), **body.sampling()}
        # pcm, mp3 and opus leave as they are made, as OpenAI's do; wav streams when asked (its header then
        # cannot know the length); flac needs the whole signal.
        incremental = fmt.incremental and (body.stream_format is not None or fmt.name != "wav")
        job = submit(arguments)
        first = await first_result(job, request) if incremental else await whole_audio(job, request)
        if first is CLIENT_GONE or not incremental:
            done(job)
        if first is CLIENT_GONE:
            return Response(status_code=CLIENT_CLOSED)
        if body.stream_format == "sse":
            input_tokens = len(tts.tokenizer.encode(body.input))
            return StreamingResponse(sse_stream(job, first, fmt, incremental, input_tokens),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        if incremental:
            return StreamingResponse(audio_stream(job, first, fmt), media_type=fmt.media_type)
        metrics.audio_seconds += first.duration
        # Compressing minutes of audio takes a while: off the event loop, while the engine goes on.
        return Response(await asyncio.to_thread(encode, first.samples, fmt, first.sample_rate),
                        media_type=fmt.media_type)

    async def audio_stream(job: Generation, first, fmt: AudioFormat) -> AsyncIterator[bytes]:
        """Bytes as chunks are made. A failure after the first chunk propagates: the status line has left,
        so an aborted connection is how the client learns that the audio is cut."""
        encoder = StreamEncoder(fmt, tts.sample_rate)
        try:
            async for audio in _chain(first, job):
                metrics.audio_seconds += audio.duration
                yield encoder.encode(audio.samples)
            yield encoder.finish()
        finally:
            job.cancel()  # a no-op when the request finished; frees its row when the client left mid-stream
            done(job)

    async def sse_stream(job: Generation, first, fmt: AudioFormat, incremental: bool,
                         input_tokens: int) -> AsyncIterator[bytes]:
        encoder = StreamEncoder(fmt, tts.sample_rate) if incremental else None
        samples = 0
        try:
            async for audio in _chain(first, job):
                metrics.audio_seconds += audio.duration
                samples += len(audio.samples)
                data = (encoder.encode(audio.samples) if encoder
                        else await asyncio.to_thread(encode, audio.samples, fmt, audio.sample_rate))
                if data:  # an Opus encoder hands out whole pages, about a second of audio each
                    yield audio_delta_event(base64.b64encode(data).decode("ascii"))
            tail = encoder.finish() if encoder else b""
            if tail:
                yield audio_delta_event(base64.b64encode(tail).decode("ascii"))
            yield audio_done_event(input_tokens, math.ceil(samples / SAMPLES_PER_FRAME))
        except Exception as exc:
            yield error_event(api_error(exc))
        finally:
            job.cancel()
            done(job)

    # -- live speech (WS /v1/audio/speech/stream) and the page at / ----------------------------------------
    def live_arguments(body: SpeechRequest) -> dict[str, Any]:
        check_options(body)
        return {"language": body.language, **voice_arguments(body), **body.sampling()}

    def live_text_check(text: str) -> None:
        check_field("text", text, tts.limits.input_tokens)

    def open_live_text(arguments: dict[str, Any]):
        """A live segment's text stream; its request is submitted when its first word has ended."""
        check_room_in_engine()
        try:
            return tts.open_text(loop=asyncio.get_running_loop(), **arguments)
        except Exception as exc:
            raise api_error(exc) from None

    async def speak_live(generation: Generation) -> AsyncIterator[Audio]:
        """Audio chunks of one live segment, as the streamed speech handler makes them."""
        open_generations.add(generation)
        try:
            async for samples in generation:
                audio = _audio(samples)
                metrics.audio_seconds += audio.duration
                yield audio
        except Exception as exc:
            raise api_error(exc) from None
        finally:
            generation.cancel()  # a no-op when it finished; frees its row when the session ended mid-segment
            done(generation)

    add_live_speech(app, live_arguments, live_text_check, open_live_text, speak_live, metrics.text_to_audio.observe,
                    max_input_chars=max_input_chars)
    add_page(app)

    # -- voices -------------------------------------------------------------------------------------------
    def voice_json(stored: StoredVoice) -> dict:
        return voice_object(stored.id, stored.name, stored.created_at, icl=stored.voice.icl)

    async def create_voice(
        request: Request,
        audio_sample: UploadFile | None = File(None, description="reference recording, 1-60 s (OpenAI's name)"),
        file: UploadFile | None = File(None, description="the same, under a shorter name"),
        ref_text: str | None = Form(None, description="its transcript; enables in-context cloning"),
        name: str | None = Form(None),
    ):
        if not is_base:
            raise ApiError(400, f"voices are made with Base models; this server runs a {tts.model_type} model",
                           code="unsupported_model")
        check_room()
        upload = audio_sample or file
        if upload is None:
            raise ApiError(400, "no reference audio: send the recording as the multipart file field "
                           "'audio_sample' (or 'file')", code="invalid_input", param="audio_sample")
        if upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"the reference recording is {upload.size} bytes; the limit is "
                           f"{MAX_UPLOAD_BYTES} (1-60 s of audio is plenty)", code="file_too_large",
                           param="audio_sample")
        data = await upload.read()
        # HTML forms send empty fields: an empty transcript means "none" (an x-vector-only voice).
        ref_text = ref_text if ref_text else None
        try:
            voice = await asyncio.to_thread(tts.create_voice, data, ref_text)
        except Exception as exc:
            raise api_error(exc) from None
        check_room()  # again: other uploads may have filled the store while this one was encoded
        return voice_json(voices.add(voice, (name or "").strip() or None))

    def check_room() -> None:
        if voices.full:
            raise ApiError(409, f"this server holds its limit of {voices.max_voices} voices; delete one "
                           "(DELETE /v1/voices/ID) before making another", code="voice_limit_reached")

    async def list_voices():
        # A CustomVoice model's speakers are voices too: clients list them to fill a picker.
        presets = [preset_voice_object(speaker, started) for speaker in tts.speakers]
        return {"object": "list", "data": presets + [voice_json(stored) for stored in voices.list()]}

    async def delete_voice(voice_id: str):
        if not voices.delete(voice_id):
            raise ApiError(404, f"there is no voice {voice_id!r} (GET /v1/voices lists them)",
                           code="voice_not_found", param="voice_id")
        return voice_deleted(voice_id)

    # OpenAI's client calls /v1/audio/voices; /v1/voices is the shorter name of the same thing.
    for prefix in ("/v1/voices", "/v1/audio/voices"):
        app.add_api_route(prefix, create_voice, methods=["POST"], summary="Clone a voice from a recording")
        app.add_api_route(prefix, list_voices, methods=["GET"], summary="List cloned voices")
        app.add_api_route(prefix + "/{voice_id}", delete_voice, methods=["DELETE"], summary="Delete a voice")

    # -- models, health, metrics ----------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        card = {"id": served_name, "object": "model", "created": started, "owned_by": "qtts",
                "model_type": tts.model_type, "speakers": tts.speakers, "languages": tts.languages,
                "sample_rate": tts.sample_rate, "response_formats": list(FORMATS)}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "error", "message": "the engine is not running"}, 503)
        stuck = stalled()
        if stuck is not None:
            return JSONResponse({"status": "error", "message": stuck}, 503)
        return {"status": "ok", "model": served_name, "running": engine.running, "queued": engine.queued}

    @app.get("/ready")
    async def ready():
        """200 once requests can run: the engine captured its graphs while the model loaded (before this
        app existed), so ready means its thread is up and the server is not shutting down."""
        if not engine.alive or shutting_down.is_set() or stalled() is not None:
            return JSONResponse({"status": "not ready"}, 503)
        return {"status": "ready", "model": served_name, "startup_s": round(engine.startup_s, 1)}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


# -- waiting on the engine -----------------------------------------------------------------------------------
CLIENT_GONE = object()
_NO_RESULT = object()


async def first_result(job: Generation, request: Request):
    """The request's first audio chunk (or `_NO_RESULT`), or `CLIENT_GONE` (request cancelled) if the
    client hangs up first. Raises ApiError for what the engine raised."""
    return await _unless_gone(_next(job), job, request)


async def whole_audio(job: Generation, request: Request):
    """All of the request's audio as one `Audio`, or `CLIENT_GONE` (request cancelled: its row is freed
    within a frame) if the client hangs up first."""
    async def collect():
        return _audio(np.concatenate([chunk async for chunk in job] or [np.zeros(0, np.float32)]))

    return await _unless_gone(collect(), job, request)


async def _unless_gone(work, job: Generation, request: Request):
    result = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        finished = result.done()
        if not finished:
            result.cancel()
            job.cancel()
    if not finished:
        return CLIENT_GONE
    try:
        return result.result()
    except Exception as exc:
        raise api_error(exc) from None


async def _next(job: Generation):
    try:
        return _audio(await anext(job))
    except StopAsyncIteration:
        return _NO_RESULT


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next message is the client's disconnect (uvicorn says so on hang-up).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _chain(first, job: Generation) -> AsyncIterator[Audio]:
    if first is not _NO_RESULT:
        yield first
    async for samples in job:
        yield _audio(samples)


def _audio(samples: np.ndarray) -> Audio:
    return Audio(samples, SAMPLE_RATE)


# -- errors in OpenAI's shape ------------------------------------------------------------------------------
def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return await api_error(request, _validation_error(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = "not_found" if exc.status_code == 404 else None
        return await api_error(request, ApiError(exc.status_code, str(exc.detail), code=code,
                                                 headers=dict(exc.headers or {})))


def _validation_error(exc: RequestValidationError) -> ApiError:
    """One clear 400 for the first thing wrong with the request body."""
    problems = exc.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request", "type": ""}
    # loc is ("body", field, ...); deeper parts name union members or list indices, not request fields.
    field = str(first["loc"][1]) if len(first["loc"]) > 1 else None
    kind = first["type"]
    if kind == "json_invalid":
        message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        field = None
    elif kind == "extra_forbidden":
        message = f"unknown field {field!r}"
    elif kind == "missing":
        message = f"{field} is required"
    else:
        message = f"{field}: {first['msg']}" if field else first["msg"]
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return ApiError(400, message, code="invalid_request", param=field)
