"""What goes over the wire: OpenAI's speech request (plus qtts's sampling extensions), the voice, model and
error objects (and what a failure means for the client), the SSE events of a streamed speech response, and
the live speech session's settings.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from ..engine.requests import EngineStopped
from ..errors import InputError, VoiceError

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1  # what a 503 asks a client to wait

# Keywords of `TTS.synthesize` that a request may set, named as in generation_config.json.
SAMPLING_FIELDS = (
    "seed", "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
    "subtalker_dosample", "subtalker_temperature", "subtalker_top_k", "subtalker_top_p",
)


class VoiceId(BaseModel):
    """OpenAI's custom-voice reference, `{"id": "voice_1234"}`."""

    model_config = ConfigDict(extra="forbid")
    id: str


class SpeechRequest(BaseModel):
    """`POST /v1/audio/speech`: OpenAI's fields, then qtts extensions (language and sampling)."""

    # Unknown fields are refused, so a misspelt sampling key is an error rather than silently ignored.
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str
    voice: str | VoiceId | None = Field(
        None, description="CustomVoice: a preset speaker. Base: the id of a voice made with POST /v1/voices. "
        "VoiceDesign: ignored (describe the voice in `instructions`)."
    )
    instructions: str | None = Field(
        None, description="CustomVoice 1.7B: speaking style. VoiceDesign: the voice description."
    )
    response_format: str | None = Field(None, description="mp3 (default where writable), opus, flac, wav, pcm")
    speed: float = 1.0
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="audio: bytes as they are made (pcm, wav); sse: speech.audio.delta events. "
        "Without it, pcm is still sent as it is made and the other formats as a complete file."
    )

    language: str = "auto"
    seed: int | None = None
    max_new_tokens: int | None = Field(None, description="upper bound on generated 80 ms frames")
    min_new_tokens: int | None = Field(None, description="EOS is masked before this many frames (benchmarks "
                                       "force a fixed length with it)")
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    subtalker_dosample: bool | None = None
    subtalker_temperature: float | None = None
    subtalker_top_k: int | None = None
    subtalker_top_p: float | None = None

    @property
    def voice_id(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice

    def sampling(self) -> dict[str, Any]:
        """The sampling keywords the request sets; the checkpoint's generation_config fills in the rest."""
        return {name: getattr(self, name) for name in SAMPLING_FIELDS if getattr(self, name) is not None}


class LiveSessionConfig(BaseModel):
    """`session.config` of `WS /v1/audio/speech/stream`: the speech request's fields less the text, which
    arrives in deltas. Field names follow vLLM-Omni's session config, so its clients port with few changes."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    voice: str | None = Field(None, validation_alias=AliasChoices("voice", "speaker"),
                              description="as in POST /v1/audio/speech; `speaker` is accepted too")
    instructions: str | None = None
    language: str = "auto"
    response_format: Literal["pcm", "wav"] = Field(
        "pcm", description="pcm: 16-bit mono 24 kHz samples; wav: the same after a streaming header per utterance"
    )
    split_granularity: Literal["sentence", "clause", "none"] = Field(
        "sentence", description="where an utterance is cut into segments (one engine request each, spoken as "
        "its text arrives): at every sentence end, also at every clause end, or only on input.flush / "
        "input.done (long text is cut anyway)"
    )
    seed: int | None = None
    max_new_tokens: int | None = Field(None, description="upper bound on the 80 ms frames of each segment")
    min_new_tokens: int | None = Field(None, description="EOS is masked before this many frames of each segment "
                                       "(benchmarks force a fixed length with it)")
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    subtalker_dosample: bool | None = None
    subtalker_temperature: float | None = None
    subtalker_top_k: int | None = None
    subtalker_top_p: float | None = None

    def speech_request(self) -> SpeechRequest:
        """The speech request each segment of this session is, with its text left empty."""
        return SpeechRequest(input="", **self.model_dump(exclude={"split_granularity"}))


class ApiError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        if self.status >= 500:
            return "server_error"
        return "not_found_error" if self.status == 404 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def voice_object(voice_id: str, name: str, created_at: int, *, icl: bool) -> dict:
    """OpenAI's `audio.voice` object; `icl` (qtts) says whether it clones in context or from the x-vector only."""
    return {"id": voice_id, "object": "audio.voice", "name": name, "created_at": created_at,
            "type": "audio_sample", "icl": icl}


def preset_voice_object(speaker: str, created_at: int) -> dict:
    """A CustomVoice model's preset speaker as a voice object: its id is what `voice` takes."""
    return {"id": speaker, "object": "audio.voice", "name": speaker, "created_at": created_at, "type": "preset"}


def voice_deleted(voice_id: str) -> dict:
    return {"id": voice_id, "object": "audio.voice.deleted", "deleted": True}


def sse_event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def audio_delta_event(audio_base64: str) -> bytes:
    return sse_event({"type": "speech.audio.delta", "audio": audio_base64})


def audio_done_event(input_tokens: int, output_tokens: int) -> bytes:
    """`output_tokens` counts the 80 ms codec frames the audio was made of."""
    usage = {"input_tokens": input_tokens, "output_tokens": output_tokens,
             "total_tokens": input_tokens + output_tokens}
    return sse_event({"type": "speech.audio.done", "usage": usage})


def error_event(error: ApiError) -> bytes:
    return sse_event({"type": "error", **error.body()})


def api_error(exc: BaseException) -> ApiError:
    """What a failure of the model's work means for the client."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (InputError, VoiceError)):
        return ApiError(400, str(exc), code="invalid_input")
    if isinstance(exc, EngineStopped):
        return ApiError(503, "the server is shutting down; retry on another replica or in a moment",
                        code="server_shutting_down", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    logger.error("synthesis failed", exc_info=exc)
    return ApiError(500, f"internal error while synthesizing ({type(exc).__name__}); see the server log",
                    code="internal_error")
