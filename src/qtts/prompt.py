"""Prompt plans: the talker's prefill embeddings and trailing text track for every mode (spec 5).

A `PromptPlan` is plain tensors: what the talker reads before its first frame, the text-track vector added
to each generated frame's feedback, and the `tts_pad` vector used once the trailing track runs out.
Builders take strings, ids and tensors (a speaker embedding, reference codes), never higher-level objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import TTSConfig
from .errors import InputError
from .models.talker import Talker
from .text import TextTokenizer, assistant_text, instruct_text, reference_text


@dataclass(frozen=True)
class PromptPlan:
    prefill: torch.Tensor  # [T, hidden]: text track + codec track per position
    trailing: torch.Tensor  # [N, hidden]: text-track vector added to frame k's feedback, k < N
    tts_pad: torch.Tensor  # [hidden]: text-track vector after the trailing track ends
    text_tokens: int = 0  # tokens of the text to speak: the runaway guard's frame budget grows with it
    context: torch.Tensor | None = None  # [n, 16] ICL reference codes: the decoder's left context, audio dropped


def supported_languages(config: TTSConfig) -> list[str]:
    """`auto` plus every codec language tag except the dialect ones, lower-case and sorted."""
    names = {"auto"} | {name for name in config.talker_config.codec_language_id if "dialect" not in name}
    return sorted(names)


def supported_speakers(config: TTSConfig) -> list[str]:
    return sorted(config.talker_config.spk_id)


def _language_key(config: TTSConfig, language: str | None) -> str:
    key = "auto" if language is None else str(language).lower()
    if key not in supported_languages(config):
        raise InputError(f"unsupported language {language!r}; choose one of: {', '.join(supported_languages(config))}")
    return key


def _speaker_key(config: TTSConfig, speaker: str) -> str:
    key = str(speaker).lower()
    if key not in config.talker_config.spk_id:
        valid = supported_speakers(config)
        raise InputError(f"unknown speaker {speaker!r}; choose one of: {', '.join(valid) if valid else '(none)'}")
    return key


def _codec_id(value) -> int:
    # Released configs may store ids as ints or one-element lists (spec 2.5).
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def _ids(values: list[int], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


class PromptBuilder:
    """Builds `PromptPlan`s for one model: its talker (embedding tables), config and tokenizer."""

    def __init__(self, talker: Talker, config: TTSConfig, tokenizer: TextTokenizer):
        self.talker, self.config, self.tokenizer = talker, config, tokenizer
        # Embeddings of fixed id sequences (the template's start, the control block's tags, a preset
        # speaker, bos/eos/pad), computed once each: a prompt is built on the caller's thread, a server's
        # event loop, where each of these was ~5 kernel launches for every request. Each is computed by the
        # same call as before, so the values are the same. Few keys: languages, speakers, the template.
        self._constants: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    @property
    def _device(self):
        return self.talker.model.codec_embedding.weight.device

    # -- public builders, one per official wrapper method ---------------------------------------------
    def voice_clone(self, text: str, speaker_embedding: torch.Tensor, *, language: str | None = "auto",
                    ref_codes: torch.Tensor | None = None, ref_text: str | None = None,
                    non_streaming_mode: bool = False, open_text: bool = False) -> PromptPlan:
        """Base models. With `ref_codes` [frames, 16] and `ref_text`: ICL clone; without: x-vector only."""
        self._require_model_type("base", "voice clone")
        hidden = self.config.talker_config.hidden_size
        if speaker_embedding.shape != (hidden,):
            raise InputError(f"speaker embedding must have shape ({hidden},), got {tuple(speaker_embedding.shape)}")
        if ref_codes is not None:
            self._check_ref_codes(ref_codes)
            if not ref_text:
                raise InputError("voice clone with reference codes (ICL) needs the reference transcript ref_text")
        language_id = self._language_id(_language_key(self.config, language))
        speaker = speaker_embedding.to(self._device, self.talker.model.codec_embedding.weight.dtype)
        reference = None if ref_codes is None else (ref_codes.to(self._device), self._encode(reference_text(ref_text)))
        return self._build(text, language_id, speaker, None, reference, non_streaming_mode, open_text)

    def custom_voice(self, text: str, speaker: str, *, language: str | None = "auto",
                     instruct: str | None = None, non_streaming_mode: bool = True,
                     open_text: bool = False) -> PromptPlan:
        """CustomVoice models: a preset speaker; Chinese/auto switches dialect speakers to their dialect tag."""
        self._require_model_type("custom_voice", "custom voice")
        language_key = _language_key(self.config, language)
        speaker_key = _speaker_key(self.config, speaker)
        language_id = self._language_id(language_key)
        dialect = self.config.talker_config.spk_is_dialect.get(speaker_key, False)
        if language_key in ("chinese", "auto") and dialect:
            language_id = _codec_id(self.config.talker_config.codec_language_id[dialect])
        speaker_vector = self._codec_constant(_codec_id(self.config.talker_config.spk_id[speaker_key]))[0]
        # The official wrapper drops instruct for the 0.6B CustomVoice model, which was not trained on it.
        if self.config.tts_model_size == "0b6":
            instruct = None
        return self._build(text, language_id, speaker_vector, instruct, None, non_streaming_mode, open_text)

    def voice_design(self, text: str, instruct: str, *, language: str | None = "auto",
                     non_streaming_mode: bool = True, open_text: bool = False) -> PromptPlan:
        """VoiceDesign models: the voice comes from the `instruct` description; no speaker position."""
        self._require_model_type("voice_design", "voice design")
        language_id = self._language_id(_language_key(self.config, language))
        return self._build(text, language_id, None, instruct, None, non_streaming_mode, open_text)

    # -- layout ------------------------------------------------------------------------------------
    def _build(self, text, language_id, speaker, instruct, reference, non_streaming_mode,
               open_text=False) -> PromptPlan:
        """`open_text`: the streaming layout for text still arriving; the trailing track holds the text so
        far without its end (`text_vectors` gives the rest, `end_of_text` the end)."""
        if not isinstance(text, str) or not text:
            raise InputError("text to speak must be a non-empty string")
        if open_text and (non_streaming_mode or reference is not None):
            raise InputError("text that arrives while it is spoken needs the streaming layout "
                             "(non_streaming_mode=False) and no ICL reference (an x-vector voice works)")
        talker, cfg, device = self.talker, self.config.talker_config, self._device
        tokens = self.tokenizer.encode(assistant_text(text))
        ids = _ids(tokens, device)
        bos, eos, pad = self._bos_eos_pad()
        parts = []
        if instruct:
            parts.append(talker.embed_text(self._encode(instruct_text(instruct))))
        parts.append(self._text_constant(*tokens[:3]))  # <|im_start|>assistant\n

        # Control block: think/language tags, speaker, codec_pad; text track pad ... pad, bos.
        if language_id is None:
            tags = [cfg.codec_nothink_id, cfg.codec_think_bos_id, cfg.codec_think_eos_id]
        else:
            tags = [cfg.codec_think_id, cfg.codec_think_bos_id, language_id, cfg.codec_think_eos_id]
        codec = [self._codec_constant(*tags)]
        if speaker is not None:
            codec.append(speaker[None])
        codec.append(self._codec_constant(cfg.codec_pad_id, cfg.codec_bos_id))
        codec = torch.cat(codec)
        text_track = torch.cat([pad[None].expand(codec.shape[0] - 2, -1), bos[None]])
        parts.append(text_track + codec[:-1])
        codec_bos = codec[-1:]

        if reference is not None:
            content, trailing = self._icl_content(ids, reference, codec_bos, eos, pad, non_streaming_mode)
        elif non_streaming_mode:
            text_ids = ids[3:-5]
            text_vectors = torch.cat([talker.embed_text(text_ids), eos[None]])
            content = torch.cat([
                text_vectors + talker.embed_codec(_ids([cfg.codec_pad_id] * (len(text_ids) + 1), device)),
                pad[None] + codec_bos,
            ])
            trailing = pad[None]
        else:
            content = talker.embed_text(ids[3:4]) + codec_bos
            trailing = talker.embed_text(ids[4:-5])
            if not open_text:
                trailing = torch.cat([trailing, eos[None]])
        parts.append(content)
        return PromptPlan(prefill=torch.cat(parts), trailing=trailing, tts_pad=pad, text_tokens=len(ids) - 8,
                          context=None if reference is None else reference[0])

    def _icl_content(self, ids, reference, codec_bos, eos, pad, non_streaming_mode):
        """ICL content: reference transcript + text against codec bos + reference frames (spec 5.3)."""
        talker, cfg = self.talker, self.config.talker_config
        ref_codes, ref_ids = reference
        text_vectors = torch.cat([talker.embed_text(torch.cat([ref_ids[3:-2], ids[3:-5]])), eos[None]])
        codec_vectors = torch.cat([codec_bos, talker.embed_frame(ref_codes)])
        n_text, n_codec = text_vectors.shape[0], codec_vectors.shape[0]
        if non_streaming_mode:
            pads = talker.embed_codec(_ids([cfg.codec_pad_id] * n_text, self._device))
            return torch.cat([text_vectors + pads, codec_vectors + pad]), pad[None]
        if n_text > n_codec:
            return text_vectors[:n_codec] + codec_vectors, text_vectors[n_codec:]
        padded = torch.cat([text_vectors, pad[None].expand(n_codec - n_text, -1)])
        return padded + codec_vectors, pad[None]

    # -- text that arrives while it is spoken ------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        """The token ids `text` has in the speech prompt (its part of the assistant template)."""
        return self.tokenizer.encode(assistant_text(text))[3:-5]

    def text_vectors(self, ids: list[int]) -> torch.Tensor:
        """Trailing-track vectors [n, H] of text ids (more of an open track)."""
        return self.talker.embed_text(_ids(ids, self._device))

    def end_of_text(self) -> torch.Tensor:
        """The track's last vector [1, H], as `_build` has it."""
        return self._bos_eos_pad()[1:2]

    # -- helpers -----------------------------------------------------------------------------------
    def _bos_eos_pad(self) -> torch.Tensor:
        """The bos, eos and pad text vectors [3, H], computed together as the official code does (the same
        float results)."""
        return self._text_constant(self.config.tts_bos_token_id, self.config.tts_eos_token_id,
                                   self.config.tts_pad_token_id)

    def _text_constant(self, *ids: int) -> torch.Tensor:
        """Text-track vectors [n, H] of fixed ids, computed once (never written to: plans share them)."""
        return self._constant("text", ids, self.talker.embed_text)

    def _codec_constant(self, *ids: int) -> torch.Tensor:
        """Codec embeddings [n, H] of fixed ids, computed once."""
        return self._constant("codec", ids, self.talker.embed_codec)

    def _constant(self, table: str, ids: tuple[int, ...], embed) -> torch.Tensor:
        key = (table, ids)
        vectors = self._constants.get(key)
        if vectors is None:
            with torch.inference_mode():
                vectors = embed(_ids(list(ids), self._device))
            if vectors.is_cuda:  # once per key: a caller on another stream may read it next
                torch.cuda.current_stream(vectors.device).synchronize()
            self._constants[key] = vectors
        return vectors

    def _encode(self, text: str) -> torch.Tensor:
        return _ids(self.tokenizer.encode(text), self._device)

    def _language_id(self, language_key: str) -> int | None:
        if language_key == "auto":
            return None
        return _codec_id(self.config.talker_config.codec_language_id[language_key])

    def _require_model_type(self, model_type: str, mode: str) -> None:
        if self.config.tts_model_type != model_type:
            raise InputError(
                f"{mode} needs a {model_type} checkpoint; this one is {self.config.tts_model_type}"
            )

    def _check_ref_codes(self, ref_codes: torch.Tensor) -> None:
        groups = self.config.talker_config.num_code_groups
        codebook = self.config.talker_config.code_predictor_config.vocab_size
        if ref_codes.ndim != 2 or ref_codes.shape[1] != groups or ref_codes.shape[0] == 0:
            raise InputError(f"reference codes must have shape [frames, {groups}], got {tuple(ref_codes.shape)}")
        if ref_codes.dtype not in (torch.int32, torch.int64):
            raise InputError(f"reference codes must be integers, got {ref_codes.dtype}")
        if int(ref_codes.min()) < 0 or int(ref_codes.max()) >= codebook:
            raise InputError(f"reference codes must lie in 0..{codebook - 1}")


def pad_batch(plans: list[PromptPlan], multiple_of: int = 1):
    """Batch plans as the official code does (spec 5.5): prefills left-padded with zeros, trailing tracks
    right-padded with tts_pad. Returns (prefill [B, T, H], valid [B, T] bool, trailing [B, N, H]).
    `multiple_of` pads T further up to a multiple of it (a captured prefill's length)."""
    longest = max(p.prefill.shape[0] for p in plans)
    longest = -(-longest // multiple_of) * multiple_of
    longest_trailing = max(p.trailing.shape[0] for p in plans)
    first = plans[0].prefill
    prefill = first.new_empty(len(plans), longest, first.shape[-1])
    valid = torch.empty(len(plans), longest, dtype=torch.bool, device=first.device)
    left_pad_into(plans, prefill, valid)
    trailing = first.new_zeros(len(plans), longest_trailing, first.shape[-1])
    for row, plan in enumerate(plans):
        trailing[row] = plan.tts_pad
        trailing[row, : plan.trailing.shape[0]] = plan.trailing
    return prefill, valid, trailing


def left_pad_into(plans: list[PromptPlan], prefill: torch.Tensor, valid: torch.Tensor) -> list[int]:
    """Write the plans' prefills left-padded with zeros into `prefill` [k, T, H] and their validity into
    `valid` [k, T] (rows past the plans are all padding); return each plan's count of padding positions."""
    count, length = valid.shape
    pads = [length - plan.prefill.shape[0] for plan in plans]
    host = torch.zeros(count, length, dtype=torch.bool)
    for row, (plan, pad) in enumerate(zip(plans, pads)):
        host[row, pad:] = True
        if pad:
            prefill[row, :pad].zero_()
        prefill[row, pad:] = plan.prefill
    if count > len(plans):
        prefill[len(plans):].zero_()
    # one copy of the validity from pinned memory: it queues behind the work in flight, no wait
    valid.copy_(host.pin_memory() if valid.is_cuda else host, non_blocking=True)
    return pads


def prompt_positions(valid: torch.Tensor) -> torch.Tensor:
    """RoPE positions [B, T] of a left-padded batch with validity `valid` [B, T]: each row's own tokens count
    from 0, as if it had no padding (padding positions are 0 and never attended to)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)
