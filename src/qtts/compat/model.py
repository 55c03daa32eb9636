"""`Qwen3TTSModel`: the official `qwen_tts.Qwen3TTSModel` surface, run by qtts.

Code written for the official package runs with one import changed: the same methods, keywords, defaults,
batch rules and return values (`(list of float32 arrays, 24000)`). Underneath, every call is one
`TTS.synthesize_batch`, so a list of texts is generated as one batch; `model.tts` is the qtts model itself,
for streaming and saved voices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..voices import Voice
from .audio_inputs import audio_source
from .options import load_options, per_text, sampling_options, texts_of

logger = logging.getLogger("qtts.compat")

_METHOD_FOR = {"base": "generate_voice_clone", "custom_voice": "generate_custom_voice",
               "voice_design": "generate_voice_design"}


@dataclass
class VoiceClonePromptItem:
    """One reference clip's voice-clone prompt, with the official field names.

    `ref_code` [frames, 16] is None for an x-vector-only prompt; `ref_spk_embedding` [hidden] is the
    speaker x-vector; `ref_text` is the reference transcript (kept, but unused, in x-vector-only mode).
    """

    ref_code: torch.Tensor | None
    ref_spk_embedding: torch.Tensor
    x_vector_only_mode: bool
    icl_mode: bool
    ref_text: str | None = None


class Qwen3TTSModel:
    """A Qwen3-TTS model behind the official wrapper's methods; make it with `from_pretrained`."""

    def __init__(self, tts):
        self.tts = tts  # the qtts.TTS doing the work
        self.device = tts.device
        self.generate_defaults = dataclasses.asdict(tts.checkpoint.generation)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "Qwen3TTSModel":
        """Load a checkpoint folder or Hugging Face repo id. `device_map` (one device, or "auto") and
        `dtype`/`torch_dtype` are honoured, `engine` is qtts's choice of loop, and the other Hugging Face
        keywords (`attn_implementation`, ...) are ignored with a debug line."""
        from ..api import load

        return cls(load(pretrained_model_name_or_path, **load_options(kwargs)))

    # -- what the model offers -----------------------------------------------------------------------
    def get_supported_speakers(self) -> list[str]:
        """Preset speaker names, sorted and lower-case (empty for Base and VoiceDesign models)."""
        return self.tts.speakers

    def get_supported_languages(self) -> list[str]:
        """Language names, sorted and lower-case, "auto" included."""
        return self.tts.languages

    # -- the three modes -----------------------------------------------------------------------------
    def generate_custom_voice(self, text: str | list[str], speaker: str | list[str],
                              language: str | list[str] | None = None, instruct: str | list[str] | None = None,
                              non_streaming_mode: bool = True, **kwargs) -> tuple[list[np.ndarray], int]:
        """CustomVoice models: speech in a preset `speaker`'s voice, styled by `instruct` (ignored by the
        0.6B model, as the official package does)."""
        self._require("custom_voice", "generate_custom_voice")
        texts = texts_of(text)
        if self.tts.config.tts_model_size == "0b6" and instruct is not None:
            logger.debug("generate_custom_voice: the 0.6B CustomVoice model ignores instruct")
            instruct = None
        return self._synthesize(texts, kwargs, language=language, speaker=per_text("speaker", speaker, len(texts)),
                                instruct=per_text("instruct", instruct, len(texts), ""),
                                non_streaming_mode=non_streaming_mode)

    def generate_voice_design(self, text: str | list[str], instruct: str | list[str],
                              language: str | list[str] | None = None, non_streaming_mode: bool = True,
                              **kwargs) -> tuple[list[np.ndarray], int]:
        """VoiceDesign models: speech in the voice `instruct` describes ("" for none)."""
        self._require("voice_design", "generate_voice_design")
        texts = texts_of(text)
        return self._synthesize(texts, kwargs, language=language,
                                instruct=per_text("instruct", instruct, len(texts), ""),
                                non_streaming_mode=non_streaming_mode)

    def generate_voice_clone(self, text: str | list[str], language: str | list[str] | None = None,
                             ref_audio=None, ref_text: str | list[str | None] | None = None,
                             x_vector_only_mode: bool | list[bool] = False, voice_clone_prompt=None,
                             non_streaming_mode: bool = False, **kwargs) -> tuple[list[np.ndarray], int]:
        """Base models: speech in the voice of `ref_audio` (path, URL, base64 or (array, sr)) with its
        transcript `ref_text`, or of prompts made once by `create_voice_clone_prompt`."""
        self._require("base", "generate_voice_clone")
        texts = texts_of(text)
        if voice_clone_prompt is None:
            if ref_audio is None:
                raise InputError("generate_voice_clone needs ref_audio (with ref_text) or voice_clone_prompt")
            voice_clone_prompt = self.create_voice_clone_prompt(ref_audio, ref_text, x_vector_only_mode)
        voices = per_text("voice_clone_prompt", [_voice(item) for item in _prompt_items(voice_clone_prompt)],
                          len(texts))
        return self._synthesize(texts, kwargs, language=language, voice=voices,
                                non_streaming_mode=non_streaming_mode)

    def create_voice_clone_prompt(self, ref_audio, ref_text: str | list[str | None] | None = None,
                                  x_vector_only_mode: bool | list[bool] = False) -> list[VoiceClonePromptItem]:
        """One reusable prompt per reference clip: its x-vector, plus its codes and transcript unless
        `x_vector_only_mode`. `ref_audio`, `ref_text` and `x_vector_only_mode` are single values or lists."""
        self._require("base", "create_voice_clone_prompt")
        clips = ref_audio if isinstance(ref_audio, list) else [ref_audio]
        texts = ref_text if isinstance(ref_text, list) else [ref_text] * len(clips)
        modes = x_vector_only_mode if isinstance(x_vector_only_mode, list) else [x_vector_only_mode] * len(clips)
        if not len(clips) == len(texts) == len(modes):
            raise InputError(f"ref_audio has {len(clips)} entries, ref_text {len(texts)} and x_vector_only_mode "
                             f"{len(modes)}; pass one of each per clip")
        items = []
        for index, (clip, transcript, x_vector_only) in enumerate(zip(clips, texts, modes)):
            if not x_vector_only and not transcript:
                which = f" (clip {index})" if len(clips) > 1 else ""
                raise InputError(f"ref_text is required when x_vector_only_mode=False (in-context cloning){which}; "
                                 "pass the transcript of the reference audio, or x_vector_only_mode=True")
            voice = self.tts.create_voice(audio_source(clip), None if x_vector_only else transcript)
            items.append(VoiceClonePromptItem(ref_code=voice.ref_codes, ref_spk_embedding=voice.speaker_embedding,
                                              x_vector_only_mode=bool(x_vector_only), icl_mode=not x_vector_only,
                                              ref_text=transcript))
        return items

    # -- plumbing ------------------------------------------------------------------------------------
    def _synthesize(self, texts: list[str], kwargs: dict, *, language, **request) -> tuple[list[np.ndarray], int]:
        sampling = sampling_options(kwargs, self.tts.config.talker_config.codec_eos_token_id)
        audio = self.tts.synthesize_batch(texts, language=per_text("language", language, len(texts), "auto"),
                                          **request, **sampling)
        return [a.samples for a in audio], self.tts.sample_rate

    def _require(self, model_type: str, method: str) -> None:
        kind = self.tts.model_type
        if kind != model_type:
            raise InputError(f"{method} needs a {model_type} checkpoint; this one is {kind}: "
                             f"use {_METHOD_FOR[kind]}")


def _prompt_items(prompt) -> list:
    """A list of prompt items from the forms the official wrapper takes: a list of items, or the dict of
    per-item lists its model consumes. One item or one qtts `Voice` is taken too."""
    if isinstance(prompt, list):
        if not prompt:
            raise InputError("voice_clone_prompt is an empty list; make it with create_voice_clone_prompt")
        return prompt
    if isinstance(prompt, dict):
        try:
            columns = [prompt[name] for name in ("ref_code", "ref_spk_embedding", "x_vector_only_mode", "icl_mode")]
        except KeyError as missing:
            raise InputError(f"voice_clone_prompt dict has no {missing} list") from None
        texts = prompt.get("ref_text") or [None] * len(columns[0])
        return [VoiceClonePromptItem(*row, ref_text=t) for *row, t in zip(*columns, texts)]
    return [prompt]


def _voice(item) -> Voice:
    """The qtts voice a prompt item (ours, the official package's, or a `Voice`) describes."""
    if isinstance(item, Voice):
        return item
    try:
        embedding, codes = item.ref_spk_embedding, item.ref_code
        icl, x_vector_only, ref_text = item.icl_mode, item.x_vector_only_mode, item.ref_text
    except AttributeError:
        raise InputError(f"voice_clone_prompt entries must be VoiceClonePromptItem (from create_voice_clone_prompt), "
                         f"got {type(item).__name__}") from None
    embedding = torch.as_tensor(embedding).detach().cpu()
    if icl:
        if codes is None:
            raise InputError("an in-context (icl_mode) prompt item needs ref_code")
        return Voice(embedding, torch.as_tensor(codes).detach().cpu().long(), ref_text)
    if x_vector_only:
        return Voice(embedding)
    raise InputError("a prompt item must have icl_mode or x_vector_only_mode set")
