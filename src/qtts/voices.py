"""Voice: what voice cloning needs from a reference clip, made once and reused; saved as safetensors.

A voice holds the speaker x-vector and, for in-context cloning (ICL), the reference clip's codec frames
and transcript. Without them (`ref_text` None) it is an x-vector-only voice. A voice only fits models of
the width its x-vector was made for, so it records the model it came from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .audio import REFERENCE_MAX_SECONDS, SAMPLE_RATE, SAMPLES_PER_FRAME
from .errors import VoiceError

FORMAT = "qtts.voice"
FORMAT_VERSION = 1
NUM_CODEBOOKS = 16  # codes per 12 Hz codec frame
CODEBOOK_SIZE = 2048
# A reference clip is at most 60 s: a voice holding more frames was not made from one, and every request
# with it would carry them in its prompt.
MAX_REF_FRAMES = math.ceil(REFERENCE_MAX_SECONDS * SAMPLE_RATE / SAMPLES_PER_FRAME)


@dataclass(frozen=True, eq=False)
class Voice:
    """Speaker x-vector [hidden] plus, for ICL, reference codes [frames, 16] and their transcript."""

    speaker_embedding: torch.Tensor
    ref_codes: torch.Tensor | None = None
    ref_text: str | None = None
    model_name: str = ""  # hub id or folder name of the model the voice was made with
    tts_model_size: str = ""  # "0b6" or "1b7", as in the model's config.json

    def __post_init__(self):
        embedding = self.speaker_embedding
        if not isinstance(embedding, torch.Tensor) or embedding.ndim != 1 or not embedding.is_floating_point():
            raise VoiceError(f"speaker_embedding must be a 1-D float tensor [hidden], got {_describe(embedding)}")
        if (self.ref_codes is None) != (self.ref_text is None):
            raise VoiceError(
                "an in-context voice needs both ref_codes and ref_text; an x-vector-only voice needs neither"
            )
        if self.ref_text is not None and (not isinstance(self.ref_text, str) or not self.ref_text.strip()):
            raise VoiceError(f"ref_text must be the transcript of the reference audio, got {self.ref_text!r}")
        codes = self.ref_codes
        if codes is not None:
            if (not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[1] != NUM_CODEBOOKS
                    or codes.shape[0] == 0 or codes.dtype != torch.int64):
                raise VoiceError(f"ref_codes must be an int64 tensor [frames, {NUM_CODEBOOKS}], got {_describe(codes)}")
            if codes.shape[0] > MAX_REF_FRAMES:
                raise VoiceError(f"ref_codes hold {codes.shape[0]} frames; a voice holds at most {MAX_REF_FRAMES} "
                                 f"({REFERENCE_MAX_SECONDS:g} s of reference audio)")
            if codes.min() < 0 or codes.max() >= CODEBOOK_SIZE:
                raise VoiceError(f"ref_codes must lie in [0, {CODEBOOK_SIZE}); these span "
                                 f"[{codes.min().item()}, {codes.max().item()}]")

    @property
    def hidden_size(self) -> int:
        """Width of the talker the voice fits (the x-vector's length)."""
        return self.speaker_embedding.shape[0]

    @property
    def icl(self) -> bool:
        """True when the voice clones in context (reference codes and transcript), False for x-vector only."""
        return self.ref_codes is not None

    def check_compatible(self, hidden_size: int, model_name: str = "") -> None:
        """Raise `VoiceError` unless the voice fits a talker of width `hidden_size`.

        Only the width decides: a voice from another model of the same width (a fine-tune, a renamed folder)
        still fits; `model_name` only makes the message clearer.
        """
        if self.hidden_size != hidden_size:
            made_for = f"{self.model_name or 'a model'} (hidden size {self.hidden_size})"
            target = f"{model_name or 'this model'} (hidden size {hidden_size})"
            raise VoiceError(f"this voice was made for {made_for} and cannot be used with {target}; "
                             "create the voice again with this model")

    def save(self, path: str | Path) -> None:
        """Write a safetensors file; everything that is not a tensor goes in its header metadata as JSON."""
        tensors = {"speaker_embedding": self.speaker_embedding.detach().cpu().contiguous()}
        if self.ref_codes is not None:
            tensors["ref_codes"] = self.ref_codes.detach().cpu().contiguous()
        metadata = {
            "format_version": FORMAT_VERSION,
            "ref_text": self.ref_text,
            "model_name": self.model_name,
            "tts_model_size": self.tts_model_size,
            "hidden_size": self.hidden_size,
        }
        save_file(tensors, str(path), metadata={FORMAT: json.dumps(metadata, ensure_ascii=False)})

    @classmethod
    def load(cls, path: str | Path) -> Voice:
        """Read a file written by `save`; raise `VoiceError` when it is missing, corrupt or not a voice."""
        path = Path(path)
        if not path.is_file():
            raise VoiceError(f"voice file not found: {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as file:
                header = file.metadata() or {}
                tensors = {name: file.get_tensor(name) for name in file.keys()}
        except Exception as exc:  # safetensors raises several types for truncated or garbage files
            raise VoiceError(f"cannot read voice file {str(path)!r}: not a valid safetensors file ({exc})") from None
        if FORMAT not in header:
            raise VoiceError(f"{str(path)!r} is a safetensors file but not a qtts voice (no {FORMAT!r} metadata)")
        try:
            metadata = json.loads(header[FORMAT])
            version = metadata["format_version"]
            fields = {key: metadata[key] for key in ("ref_text", "model_name", "tts_model_size")}
            hidden_size = metadata["hidden_size"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise VoiceError(f"voice file {str(path)!r} has corrupt metadata ({exc!r})") from None
        if version != FORMAT_VERSION:
            raise VoiceError(f"voice file {str(path)!r} has format version {version}; this qtts reads "
                             f"version {FORMAT_VERSION}")
        if "speaker_embedding" not in tensors:
            raise VoiceError(f"voice file {str(path)!r} has no speaker_embedding tensor")
        voice = cls(tensors["speaker_embedding"], tensors.get("ref_codes"), **fields)
        if voice.hidden_size != hidden_size:
            raise VoiceError(f"voice file {str(path)!r} is corrupt: its x-vector has {voice.hidden_size} values "
                             f"but its metadata says {hidden_size}")
        return voice


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
