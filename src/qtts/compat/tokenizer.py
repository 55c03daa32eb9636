"""`Qwen3TTSTokenizer`: the official speech tokenizer's surface (12 Hz codec: audio <-> codes [frames, 16]),
run by qtts's codec encoder and decoder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import read_audio
from ..checkpoint import MODEL_FILE, build_empty, load_weights, resolve, split_prefixes
from ..config import SpeechTokenizerConfig, read_json
from ..errors import InputError
from ..models.codec_decoder import CodecDecoder, decode_official
from ..models.codec_encoder import CodecEncoder, encode
from .audio_inputs import audio_source
from .options import device_of, dtype_of, ignore, logger

MODEL_TYPE = "qwen3_tts_tokenizer_12hz"


@dataclass
class EncodedAudio:
    """What `encode` returns, as the official encoder output: `audio_codes`, one LongTensor [frames, 16]
    per clip."""

    audio_codes: list[torch.Tensor]


class Qwen3TTSTokenizer:
    """The Qwen3-TTS 12 Hz speech tokenizer; make it with `from_pretrained`."""

    def __init__(self, config: SpeechTokenizerConfig, encoder: CodecEncoder, decoder: CodecDecoder):
        self.config = config
        self.encoder = encoder
        self.decoder = decoder
        self.device = next(decoder.parameters()).device

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "Qwen3TTSTokenizer":
        """Load a tokenizer folder or repo id (e.g. "Qwen/Qwen3-TTS-Tokenizer-12Hz", or a model's
        `speech_tokenizer` folder). `device_map` picks the device; the codec runs in float32, so `dtype`
        and the other Hugging Face keywords are ignored with a debug line."""
        kwargs = dict(kwargs)
        device = device_of(kwargs.pop("device_map", None))
        if dtype_of(kwargs) is not None:
            logger.debug("Qwen3TTSTokenizer.from_pretrained: dtype ignored; the codec runs in float32")
        ignore("Qwen3TTSTokenizer.from_pretrained", kwargs)
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {device} was asked for, but this PyTorch sees no CUDA GPU; use device_map='cpu'")
        folder, _ = resolve(pretrained_model_name_or_path)
        config = SpeechTokenizerConfig.from_dict(read_json(Path(folder) / "config.json"))
        weights = Path(folder) / MODEL_FILE
        split_prefixes(weights, ("encoder.", "decoder."))
        encoder = build_empty(
            lambda **kw: CodecEncoder(config.encoder_config, config.encoder_valid_num_quantizers, **kw),
            device, torch.float32,
        )
        load_weights(encoder, weights, "encoder.")
        decoder = build_empty(lambda **kw: CodecDecoder(config.decoder_config, **kw), device, torch.float32)
        load_weights(decoder, weights, "decoder.")
        return cls(config, encoder, decoder)

    @torch.inference_mode()
    def encode(self, audios, sr: int | None = None, return_dict: bool = True) -> EncodedAudio:
        """Codes of one clip or a list of clips: paths, URLs or base64 strings, or numpy waveforms with
        their sample rate `sr`. Clips are encoded together, right-padded, as the official encoder does."""
        clips = audios if isinstance(audios, list) else [audios]
        if not clips:
            raise InputError("encode got an empty list of audio")
        if any(isinstance(clip, np.ndarray) for clip in clips):
            if sr is None:
                raise InputError("numpy waveforms need their sample rate: pass sr=")
            clips = [(clip, sr) if isinstance(clip, np.ndarray) else clip for clip in clips]
        waves = [read_audio(audio_source(clip)) for clip in clips]
        batch = torch.zeros(len(waves), max(len(w) for w in waves), device=self.device)
        for row, wave in enumerate(waves):
            batch[row, : len(wave)] = torch.from_numpy(wave)
        codes = encode(self.encoder, batch, [len(w) for w in waves])
        encoded = EncodedAudio([c.cpu() for c in codes])
        return encoded if return_dict else (encoded.audio_codes,)

    @torch.inference_mode()
    def decode(self, encoded) -> tuple[list[np.ndarray], int]:
        """Waveforms for the output of `encode`, a dict {"audio_codes": ...} or a list of such dicts;
        codes are tensors or arrays [frames, 16] (or one [batch, frames, 16] tensor padded with -1)."""
        if hasattr(encoded, "audio_codes"):
            codes = encoded.audio_codes
        elif isinstance(encoded, dict) and "audio_codes" in encoded:
            codes = encoded["audio_codes"]
        elif isinstance(encoded, list) and encoded and all(isinstance(e, dict) and "audio_codes" in e for e in encoded):
            codes = [e["audio_codes"] for e in encoded]
        else:
            raise InputError("decode takes the output of encode(), a dict with 'audio_codes', or a list of them")
        padded = self._padded(codes)
        wavs = decode_official(self.decoder, padded)
        return [w.float().cpu().numpy() for w in wavs], self.get_output_sample_rate()

    def _padded(self, codes) -> torch.Tensor:
        """Codes as one [batch, frames, 16] LongTensor right-padded with -1, checked."""
        groups = self.config.encoder_valid_num_quantizers
        if isinstance(codes, (torch.Tensor, np.ndarray)) and torch.as_tensor(codes).dim() == 3:
            rows = list(torch.as_tensor(codes))
        else:
            rows = [torch.as_tensor(c) for c in (codes if isinstance(codes, (list, tuple)) else [codes])]
        for row in rows:
            if row.dim() != 2 or row.shape[1] != groups or row.is_floating_point():
                raise InputError(f"audio codes must be integers shaped [frames, {groups}], got "
                                 f"{row.dtype} {list(row.shape)}")
        if not rows:
            raise InputError("decode got no audio codes")
        padded = torch.full((len(rows), max(r.shape[0] for r in rows), groups), -1, dtype=torch.long)
        for index, row in enumerate(rows):
            padded[index, : row.shape[0]] = row
        if (padded < -1).any() or (padded >= self.config.decoder_config.codebook_size).any():
            raise InputError(f"audio codes must lie in [0, {self.config.decoder_config.codebook_size}) "
                             "(-1 marks padding)")
        return padded.to(self.device)

    # -- facts ---------------------------------------------------------------------------------------
    def get_model_type(self) -> str:
        return MODEL_TYPE

    def get_input_sample_rate(self) -> int:
        return self.config.input_sample_rate

    def get_output_sample_rate(self) -> int:
        return self.config.output_sample_rate

    def get_encode_downsample_rate(self) -> int:
        return self.config.encode_downsample_rate

    def get_decode_upsample_rate(self) -> int:
        return self.config.decode_upsample_rate
