"""The front door: `qtts.load(model)` -> `TTS`, whose methods turn text into codes and codes into audio.

`TTS` wires the stages (prompt -> generation -> codec decoder) and owns the user-facing validation; the
stages themselves live in their own modules and know nothing of each other.
"""

from __future__ import annotations

import atexit
import gc
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .audio import SAMPLE_RATE, Audio, load_audio, mel_spectrogram
from .checkpoint import Checkpoint, build_empty, load_weights, open_checkpoint, split_prefixes
from .engine.requests import Generation
from .incremental import TextStream
from .long_text import Segments, split_long_text
from .engine.scheduler import Scheduler
from .errors import InputError, VoiceError
from .limits import PromptLimits, check_text
from .models.codec_decoder import CodecDecoder, channels_last_convolutions, decode_official
from .models.codec_encoder import CodecEncoder, encode
from .models.speaker_encoder import SpeakerEncoder
from .models.talker import Talker
from .prompt import PromptBuilder, PromptPlan, supported_languages, supported_speakers
from .sampling import INT64_END, SamplingParams
from .text import TextTokenizer
from .voices import Voice

ENGINES = ("auto", "fast", "reference")


def load(model: str | os.PathLike, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, engine: str = "auto", max_batch: int | None = None,
         max_len: int = 4096, codec_dtype: torch.dtype | str | None = None) -> "TTS":
    """Load a Qwen3-TTS 12 Hz checkpoint from a folder or a Hugging Face repo id.

    The talker runs in `dtype` (default bf16 on CUDA, float32 on CPU); the speaker encoder and the codec
    encoder stay in float32, as the official checkpoints store them and as their small cost allows. The
    codec decoder runs in `codec_dtype` (a torch dtype or its name, float32 or bfloat16; default: the
    talker's, as the official package decodes in the dtype it is loaded in); audio is float32 either way.
    At many streams at once the decoder is a large share of the GPU's work, and bf16 makes it cheaper.

    Every request runs through one continuous-batching engine (`engine.scheduler`) of `max_batch` rows of
    `max_len` cache positions (prompt plus frames). `engine` picks its kernels: "fast" (fused Triton
    kernels and CUDA graphs; eager where there is no GPU), "reference" (plain PyTorch ops, eager), or
    "auto": fast on CUDA, reference on CPU.
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    device = resolve_device(device)
    ckpt = open_checkpoint(model)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = ckpt.config
    is_base = cfg.tts_model_type == "base"
    split_prefixes(ckpt.model_file, ("talker.", "speaker_encoder.") if is_base else ("talker.",))

    talker = build_empty(lambda **kw: Talker(cfg.talker_config, **kw), device, dtype)
    load_weights(talker, ckpt.model_file, "talker.")
    speaker_encoder = None
    if is_base:
        speaker_encoder = build_empty(
            lambda **kw: SpeakerEncoder(cfg.speaker_encoder_config, **kw), device, torch.float32
        )
        load_weights(speaker_encoder, ckpt.model_file, "speaker_encoder.")
    speech = ckpt.speech_tokenizer
    split_prefixes(ckpt.speech_tokenizer_file, ("encoder.", "decoder."))
    codec_encoder = build_empty(
        lambda **kw: CodecEncoder(speech.encoder_config, speech.encoder_valid_num_quantizers, **kw),
        device, torch.float32,
    )
    load_weights(codec_encoder, ckpt.speech_tokenizer_file, "encoder.")
    codec_decoder = build_empty(lambda **kw: CodecDecoder(speech.decoder_config, **kw), device,
                                resolve_codec_dtype(codec_dtype, dtype))
    load_weights(codec_decoder, ckpt.speech_tokenizer_file, "decoder.")
    if device.type == "cuda":
        channels_last_convolutions(codec_decoder)
    tokenizer = TextTokenizer.from_folder(ckpt.path)
    fast = engine == "fast" or (engine == "auto" and device.type == "cuda")
    if max_batch is None:
        max_batch = default_max_batch(cfg.talker_config, device, dtype, max_len)
    if not isinstance(max_batch, int) or not 1 <= max_batch <= 1024:
        raise InputError(f"max_batch must be an integer in 1..1024, got {max_batch!r}")
    if not isinstance(max_len, int) or not 128 <= max_len <= 1 << 20:
        raise InputError(f"max_len must be an integer in 128..{1 << 20}, got {max_len!r}")
    scheduler = Scheduler(talker, codec_decoder, max_batch=max_batch, max_len=max_len,
                          graphs=fast and device.type == "cuda", fused=None if fast else False)
    return TTS(ckpt, talker, speaker_encoder, codec_encoder, codec_decoder, tokenizer, scheduler)


def freeze_loaded_heap() -> None:
    """Leave the objects made so far (a loaded model, torch, tokenizers: ~200k of them) out of every later
    garbage collection. A full collection otherwise walks them all with the GIL held while the engine
    thread waits: 116 ms on an H100 machine's host, a pause every running stream hears. Call it once after
    `load` in a process that serves many streams (`qtts serve` does); it changes garbage collection for the
    whole process, so `load` leaves it to the caller. At exit the objects are thawed again."""
    gc.collect()
    gc.freeze()
    # Frozen objects escape the interpreter's last collection: Triton's bindings then report their objects
    # as leaked at exit, about 40 lines of false alarm on every server shutdown.
    atexit.unregister(gc.unfreeze)  # once, however often this is called
    atexit.register(gc.unfreeze)


CODEC_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_codec_dtype(codec_dtype: torch.dtype | str | None, talker_dtype: torch.dtype) -> torch.dtype:
    if codec_dtype is None:
        return talker_dtype if talker_dtype in CODEC_DTYPES.values() else torch.float32
    if isinstance(codec_dtype, str):
        if codec_dtype not in CODEC_DTYPES:
            raise InputError(f"unknown codec dtype {codec_dtype!r}; choose one of: {', '.join(CODEC_DTYPES)}")
        return CODEC_DTYPES[codec_dtype]
    if codec_dtype not in CODEC_DTYPES.values():
        raise InputError(f"the codec decoder runs in float32 or bfloat16, not {codec_dtype}")
    return codec_dtype


def default_max_batch(talker_config, device: torch.device, dtype: torch.dtype, max_len: int) -> int:
    """64 rows, or fewer where the KV cache pool of 64 rows of `max_len` positions would take more than half
    of the GPU's free memory (a 24 GB card holds fewer 1.7B rows than an H200)."""
    if device.type != "cuda":
        return 64
    free, _ = torch.cuda.mem_get_info(device)
    per_row = (2 * talker_config.num_hidden_layers * talker_config.num_key_value_heads * talker_config.head_dim
               * max_len * torch.finfo(dtype).bits // 8)
    return max(1, min(64, int(free * 0.5 // per_row)))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch device qtts can run on (default: cuda when there is one); `InputError` for
    anything else, said before any weight is read."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"qtts runs on cpu or cuda, not {resolved.type} (device {device!r})")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {resolved} was asked for, but this PyTorch sees no CUDA GPU; use device='cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {resolved} was asked for, but there are {torch.cuda.device_count()} CUDA GPUs")
    return resolved


class TTS:
    """A loaded model. Thread-safe: every call submits to the one engine, which runs requests together."""

    def __init__(self, checkpoint: Checkpoint, talker: Talker, speaker_encoder: SpeakerEncoder | None,
                 codec_encoder: CodecEncoder, codec_decoder: CodecDecoder, tokenizer: TextTokenizer,
                 engine: Scheduler):
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.talker = talker
        self.speaker_encoder = speaker_encoder
        self.codec_encoder = codec_encoder
        self.codec_decoder = codec_decoder
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(talker, self.config, tokenizer)
        self.engine = engine
        self.limits = PromptLimits()  # token limits of each text part; replace to change them

    # -- what the model offers --------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        """"base" (voice clone), "custom_voice" (preset speakers) or "voice_design" (described voices)."""
        return self.config.tts_model_type

    @property
    def speakers(self) -> list[str]:
        return supported_speakers(self.config)

    @property
    def languages(self) -> list[str]:
        return supported_languages(self.config)

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def device(self) -> torch.device:
        return self.talker.codec_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.talker.codec_head.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.config.talker_config.hidden_size

    def check_voice(self, voice: Voice) -> None:
        """Raise `VoiceError` unless `voice` fits this model and its transcript is within `limits`."""
        voice.check_compatible(self.hidden_size, self.checkpoint.name)
        if voice.ref_text is not None:
            try:
                check_text(self.tokenizer, "ref_text", voice.ref_text, self.limits.ref_text_tokens)
            except InputError as exc:
                raise VoiceError(f"this voice cannot be used: its {exc}") from None

    # -- text -> codes ----------------------------------------------------------------------------------
    def sampling_params(self, **overrides) -> SamplingParams:
        """Sampling settings: explicit keywords over generation_config.json over the official defaults.

        A `max_new_tokens` the talker's positions cannot hold is refused here: caches are sized from it."""
        params = SamplingParams.from_generation_config(self.checkpoint.generation, **overrides)
        positions = self.config.talker_config.max_position_embeddings
        if params.max_new_tokens >= positions:
            raise InputError(f"max_new_tokens {params.max_new_tokens} is more frames than this model can make: "
                             f"the prompt and the frames share its {positions} positions; ask for at most "
                             f"{self.checkpoint.generation.max_new_tokens} (generation_config.json)")
        return params

    def plan(self, text: str, *, language: str = "auto", voice: Voice | None = None, speaker: str | None = None,
             instruct: str | None = None, non_streaming_mode: bool | None = None,
             open_text: bool = False) -> PromptPlan:
        """The prefill embeddings and trailing text track for one request, after validating it; `open_text`:
        `text` is the start of a text still arriving (streaming layout, track left open)."""
        check_text(self.tokenizer, "text", text, self.limits.input_tokens)
        if instruct:
            check_text(self.tokenizer, "instruct", instruct, self.limits.instructions_tokens)
        kind = self.model_type
        if kind == "base":
            if speaker is not None:
                raise InputError("this is a Base (voice clone) model: it has no preset speakers; pass voice=")
            if instruct:
                raise InputError("this is a Base (voice clone) model: instruct is not supported")
            if voice is None:
                raise InputError("a Base model clones a voice: pass voice=tts.create_voice(reference_audio, ...)")
            self.check_voice(voice)
            return self.prompts.voice_clone(
                text, voice.speaker_embedding, language=language, ref_codes=voice.ref_codes,
                ref_text=voice.ref_text, non_streaming_mode=bool(non_streaming_mode), open_text=open_text,
            )
        if voice is not None:
            raise InputError(f"voices are for Base models; this is a {kind} model")
        if kind == "custom_voice":
            if speaker is None:
                raise InputError(f"a CustomVoice model needs speaker=, one of: {', '.join(self.speakers)}")
            if instruct and self.config.tts_model_size == "0b6":
                warnings.warn("the 0.6B CustomVoice model ignores instruct (as the official package does)",
                              stacklevel=3)
            return self.prompts.custom_voice(
                text, speaker, language=language, instruct=instruct,
                non_streaming_mode=True if non_streaming_mode is None else non_streaming_mode, open_text=open_text,
            )
        if speaker is not None:
            raise InputError("a VoiceDesign model has no preset speakers; describe the voice with instruct=")
        return self.prompts.voice_design(
            text, instruct or "", language=language,
            non_streaming_mode=True if non_streaming_mode is None else non_streaming_mode, open_text=open_text,
        )

    def generate_codes(self, text: str, *, language: str = "auto", voice: Voice | None = None,
                       speaker: str | None = None, instruct: str | None = None,
                       non_streaming_mode: bool | None = None, **sampling) -> torch.Tensor:
        """Codes [frames, 16] for `text` (no audio); sampling keywords as in generation_config.json."""
        plan, params = self._request(text, language, voice, speaker, instruct, non_streaming_mode, sampling)
        return self.engine.submit(plan, params, audio=False).result()[1].codes

    def _request(self, text, language, voice, speaker, instruct, non_streaming_mode, sampling):
        with torch.inference_mode():
            params = self.sampling_params(**sampling)
            plan = self.plan(text, language=language, voice=voice, speaker=speaker, instruct=instruct,
                             non_streaming_mode=non_streaming_mode)
        return plan, params

    # -- codes -> audio -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> Audio:
        """Audio for codes [frames, 16], exactly as the official decoder (300-frame chunks, 25 of context)."""
        return self._decode_batch([self._check_codes(codes).to(self.device)], [None])[0]

    def synthesize(self, text: str, *, language: str = "auto", voice: Voice | None = None,
                   speaker: str | None = None, instruct: str | None = None,
                   non_streaming_mode: bool | None = None, stream: bool = False,
                   **sampling) -> Audio | Iterator[Audio]:
        """Speech for `text` as one `Audio` (24 kHz float32), or with `stream=True` an iterator of `Audio`
        chunks as they are made (the first after one frame); joined, the chunks equal the whole audio.
        Closing the iterator early (or dropping it) cancels the request. Text over `long_text.SEGMENT_CHARS`
        characters is spoken as consecutive segments cut at sentence ends (`long_text`).

        The request is validated before this returns, so a bad argument raises here, not mid-stream."""
        generation = self._submit_text(text, language, voice, speaker, instruct, non_streaming_mode, sampling)
        if stream:
            return _audio_chunks(generation)
        return _joined(generation.result()[0])

    def submit(self, text: str, *, language: str = "auto", voice: Voice | None = None,
               speaker: str | None = None, instruct: str | None = None, non_streaming_mode: bool | None = None,
               loop=None, **sampling) -> Generation | Segments:
        """Queue one utterance and return its handle (audio chunks as float32 arrays, then the finish
        reason and timings; `cancel()`): a `Generation`, or for long text a `long_text.Segments` with the
        same interface. `loop`: an asyncio loop to deliver to, for `async for` (the server uses this).
        Validated before it returns."""
        return self._submit_text(text, language, voice, speaker, instruct, non_streaming_mode, sampling, loop)

    def _submit_text(self, text, language, voice, speaker, instruct, non_streaming_mode, sampling, loop=None):
        check_text(self.tokenizer, "text", text, self.limits.input_tokens)  # the whole text, then each segment
        segments = split_long_text(text)
        requests = [self._request(segment, language, voice, speaker, instruct, non_streaming_mode, sampling)
                    for segment in segments]
        if len(requests) == 1:
            plan, params = requests[0]
            return self.engine.submit(plan, params, loop=loop)

        def submit_segment(index: int) -> Generation:
            plan, params = requests[index]
            seed = None if params.seed is None else (params.seed + index) % INT64_END
            return self.engine.submit(plan, params, seed=seed, loop=loop)

        return Segments(submit_segment, len(requests))

    def open_text(self, *, language: str = "auto", voice: Voice | None = None, speaker: str | None = None,
                  instruct: str | None = None, loop=None, **sampling) -> TextStream:
        """One utterance whose text arrives while it is spoken (an LLM's answer as it is written): `feed`
        text in pieces of any size, `end()` when it is complete, iterate the handle for audio chunks. Each
        text token joins the request's text track as soon as it is certain, and the request waits in the
        engine's batch when it has spoken all it has (`incremental`). An ICL voice (made with a reference
        transcript) holds the whole text in its prompt, so with one the request starts at `end()`. `loop`:
        deliver the request's events to this asyncio loop (`async for` over `handle.generation`), as
        `submit` does."""
        with torch.inference_mode():
            params = self.sampling_params(**sampling)

        def start(text: str, open_text: bool) -> PromptPlan:
            with torch.inference_mode():
                return self.plan(text, language=language, voice=voice, speaker=speaker, instruct=instruct,
                                 non_streaming_mode=False, open_text=open_text)

        return TextStream(self.engine, self.prompts, start, params,
                          lambda text: check_text(self.tokenizer, "text", text, self.limits.input_tokens), loop,
                          incremental=not (voice is not None and voice.icl))

    def synthesize_batch(self, texts: Sequence[str], *, language: str | Sequence[str] = "auto",
                         voice: Voice | None | Sequence[Voice | None] = None,
                         speaker: str | None | Sequence[str | None] = None,
                         instruct: str | None | Sequence[str | None] = None,
                         non_streaming_mode: bool | None = None, **sampling) -> list[Audio]:
        """Speech for several texts, generated together, in order.

        `language`, `voice`, `speaker` and `instruct` are one value for every text or a list with one per
        text; sampling settings are shared. With `seed`, text i draws with seed + i: reproducible."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise InputError("texts must be a non-empty list of strings; use synthesize() for one text")
        count = len(texts)

        def per_text(name, value):
            if isinstance(value, (list, tuple)):
                if len(value) != count:
                    raise InputError(f"{name} has {len(value)} entries for {count} texts")
                return list(value)
            return [value] * count

        with torch.inference_mode():
            params = self.sampling_params(**sampling)
            plans = [
                self.plan(text, language=lang, voice=v, speaker=spk, instruct=ins,
                          non_streaming_mode=non_streaming_mode)
                for text, lang, v, spk, ins in zip(texts, per_text("language", language), per_text("voice", voice),
                                                   per_text("speaker", speaker), per_text("instruct", instruct))
            ]
        generations = [self.engine.submit(plan, params, seed=None if params.seed is None else params.seed + row)
                       for row, plan in enumerate(plans)]
        return [_joined(generation.result()[0]) for generation in generations]

    def _decode_batch(self, codes: list[torch.Tensor], contexts: list[torch.Tensor | None]) -> list[Audio]:
        """Audio per item, decoded together as the official decode does (rows right-padded with -1). An ICL
        item's reference frames are decoder left context whose share of the samples is cut (spec 5.6)."""
        rows = [c if ctx is None else torch.cat([ctx.to(c.device), c]) for c, ctx in zip(codes, contexts)]
        longest = max(row.shape[0] for row in rows)
        if longest == 0:
            return [Audio(np.zeros(0, dtype=np.float32), SAMPLE_RATE) for _ in rows]
        padded = torch.full((len(rows), longest, rows[0].shape[1]), -1, dtype=torch.long, device=self.device)
        for index, row in enumerate(rows):
            padded[index, : row.shape[0]] = row
        audio = []
        for wav, row, ctx in zip(decode_official(self.codec_decoder, padded), rows, contexts):
            samples = wav.float().cpu().numpy()
            if ctx is not None:
                samples = samples[int(ctx.shape[0] / max(row.shape[0], 1) * samples.shape[0]):]
            audio.append(Audio(samples, SAMPLE_RATE))
        return audio

    def close(self) -> None:
        """Stop the engine: requests still running end with an error."""
        self.engine.close()

    def __enter__(self) -> "TTS":
        return self

    def __exit__(self, *exc_info) -> None:
        """`with qtts.load(...) as tts:` closes the engine when the block ends."""
        self.close()

    # -- audio -> codes, voices ---------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, audio) -> torch.Tensor:
        """Codes [frames, 16] of reference audio (a path, bytes, or (array, sample_rate))."""
        samples = load_audio(audio)
        return encode(self.codec_encoder, torch.from_numpy(samples).to(self.device)).cpu()

    @torch.inference_mode()
    def create_voice(self, ref_audio, ref_text: str | None = None) -> Voice:
        """A reusable cloned voice: speaker embedding, plus reference codes and transcript when given (ICL)."""
        if self.speaker_encoder is None:
            raise InputError(f"voices are made with Base models; this is a {self.model_type} model")
        if ref_text is not None:
            if isinstance(ref_text, str) and not ref_text.strip():
                raise InputError("ref_text is empty; pass the transcript of the reference audio, or None for "
                                 "an x-vector-only voice")
            check_text(self.tokenizer, "ref_text", ref_text, self.limits.ref_text_tokens)
        samples = load_audio(ref_audio)
        wav = torch.from_numpy(samples).to(self.device)
        # Launch the speaker encoder and the codec encoder before copying anything back to the host.
        embedding = self.speaker_encoder(mel_spectrogram(wav)[None])[0].to(self.dtype)
        codes = encode(self.codec_encoder, wav) if ref_text is not None else None
        return Voice(embedding.cpu(), None if codes is None else codes.cpu(), ref_text, self.checkpoint.name,
                     self.config.tts_model_size)

    def _check_codes(self, codes) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        groups = self.config.talker_config.num_code_groups
        if codes.dim() != 2 or codes.shape[1] != groups:
            raise InputError(f"codes must have shape [frames, {groups}], got {list(codes.shape)}")
        if codes.is_floating_point():
            raise InputError("codes must be integers")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codec_decoder.config.codebook_size):
            raise InputError(f"codes must lie in [0, {self.codec_decoder.config.codebook_size})")
        return codes.long()



def _audio_chunks(generation: Generation | Segments) -> Iterator[Audio]:
    try:
        for samples in generation:
            yield Audio(samples, SAMPLE_RATE)
    finally:  # closed early or dropped: the engine frees the request's row within a frame
        generation.cancel()


def _joined(chunks: list[np.ndarray]) -> Audio:
    return Audio(np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32), SAMPLE_RATE)
