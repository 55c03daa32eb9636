"""Dataclasses mirroring the official checkpoint JSON files.

Field names are the JSON keys, so grepping a key from a `config.json` lands here. Dimensions have no
defaults on purpose: the official config classes default to values that are *not* the released ones
(20 layers, codec ids >= 4196, ...), so a checkpoint that omits them is rejected rather than guessed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import CheckpointError


def _from_dict(cls, data: dict[str, Any], where: str):
    """Build dataclass `cls` from the keys it knows, each checked against its field's type; unknown keys are
    ignored (HF adds many)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise CheckpointError(f"{where}: missing required key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    for key in names & set(data):
        _check_value(where, key, data[key], hints[key])
    return cls(**{k: v for k, v in data.items() if k in names})


# Integer keys that are sizes or counts: zero or a negative value would fail deep inside a layer.
_DIMENSION = re.compile(r"^num_|_(size|dim|layers|heads|quantizers|embeddings|channels)$")


def _check_value(where: str, key: str, value, hint) -> None:
    if not _matches(value, hint):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise CheckpointError(f"{where}: {key} must be {_describe(hint)}, got {shown}")
    if _matches(value, int) and _DIMENSION.search(key) and value < 1:
        raise CheckpointError(f"{where}: {key} must be a positive integer, got {value}")


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, tuple) and all(_matches(item, typing.get_args(hint)[0]) for item in value)
    # dict contents vary between released files (ids as ints or one-element lists): only the shape is checked.
    return isinstance(value, origin or hint)


_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def _describe(hint) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return f"a list of {_PLURALS.get(item, _describe(item))}"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
             dict: "a JSON object"}
    return names.get(typing.get_origin(hint) or hint, f"a {getattr(hint, '__name__', hint)} object")


@dataclass(frozen=True)
class CodePredictorConfig:
    """`talker_config.code_predictor_config`: the 5-layer model that fills codebooks 1..15."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_code_groups: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 65536
    hidden_act: str = "silu"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CodePredictorConfig":
        return _from_dict(cls, data, "config.json talker_config.code_predictor_config")


@dataclass(frozen=True)
class TalkerConfig:
    """`talker_config`: the 28-layer Qwen3 decoder that predicts codebook 0, plus its codec ids."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    num_code_groups: int
    text_hidden_size: int
    text_vocab_size: int
    codec_eos_token_id: int
    codec_think_id: int
    codec_nothink_id: int
    codec_think_bos_id: int
    codec_think_eos_id: int
    codec_pad_id: int
    codec_bos_id: int
    code_predictor_config: CodePredictorConfig
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    codec_language_id: dict[str, int] = field(default_factory=dict)
    spk_id: dict[str, Any] = field(default_factory=dict)
    spk_is_dialect: dict[str, Any] = field(default_factory=dict)

    @property
    def attention_head_dim(self) -> int:
        # The official model reads `head_dim` with a fallback of hidden / heads.
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TalkerConfig":
        data = dict(data)
        if "code_predictor_config" not in data:
            raise CheckpointError("config.json talker_config: missing required key code_predictor_config")
        data["code_predictor_config"] = CodePredictorConfig.from_dict(data["code_predictor_config"])
        for key in ("codec_language_id", "spk_id", "spk_is_dialect"):
            if data.get(key) is None:
                data[key] = {}
        return _from_dict(cls, data, "config.json talker_config")


@dataclass(frozen=True)
class SpeakerEncoderConfig:
    """`speaker_encoder_config` (Base checkpoints only): ECAPA-TDNN on a 128-bin log-mel."""

    enc_dim: int
    mel_dim: int = 128
    enc_channels: tuple[int, ...] = (512, 512, 512, 512, 1536)
    enc_kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    enc_dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    enc_attention_channels: int = 128
    enc_res2net_scale: int = 8
    enc_se_channels: int = 128
    sample_rate: int = 24000

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpeakerEncoderConfig":
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return _from_dict(cls, data, "config.json speaker_encoder_config")


@dataclass(frozen=True)
class TTSConfig:
    """Top-level `config.json` of a Qwen3-TTS checkpoint (`model_type` "qwen3_tts")."""

    tts_model_type: str
    tts_model_size: str
    talker_config: TalkerConfig
    tokenizer_type: str = "qwen3_tts_tokenizer_12hz"
    speaker_encoder_config: SpeakerEncoderConfig | None = None
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673

    MODEL_TYPES = ("base", "custom_voice", "voice_design")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TTSConfig":
        data = dict(data)
        if data.get("model_type", "qwen3_tts") != "qwen3_tts":
            raise CheckpointError(
                f"config.json: model_type is {data.get('model_type')!r}, expected 'qwen3_tts' "
                "(is this a Qwen3-TTS checkpoint?)"
            )
        if "talker_config" not in data:
            raise CheckpointError("config.json: missing required key talker_config")
        data["talker_config"] = TalkerConfig.from_dict(data["talker_config"])
        if data.get("tts_model_type") not in cls.MODEL_TYPES:
            raise CheckpointError(
                f"config.json: tts_model_type is {data.get('tts_model_type')!r}, "
                f"expected one of {', '.join(cls.MODEL_TYPES)}"
            )
        if data.get("tokenizer_type", "qwen3_tts_tokenizer_12hz") != "qwen3_tts_tokenizer_12hz":
            raise CheckpointError(
                f"config.json: tokenizer_type {data['tokenizer_type']!r} is not supported; "
                "qtts runs the released 12 Hz models only"
            )
        spk = data.get("speaker_encoder_config")
        if data["tts_model_type"] == "base":
            if spk is None:
                raise CheckpointError("config.json: a base model needs speaker_encoder_config")
            data["speaker_encoder_config"] = SpeakerEncoderConfig.from_dict(spk)
        else:
            # CustomVoice/VoiceDesign configs may still carry the block; the weights are absent.
            data["speaker_encoder_config"] = None
        return _from_dict(cls, data, "config.json")


@dataclass(frozen=True)
class GenerationConfig:
    """`generation_config.json`: sampling defaults for the talker and the code predictor."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    subtalker_dosample: bool = True
    subtalker_temperature: float = 0.9
    subtalker_top_k: int = 50
    subtalker_top_p: float = 1.0
    # The official wrapper's hard default when the JSON lacks the key is 2048; released files say 8192.
    max_new_tokens: int = 2048

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationConfig":
        return _from_dict(cls, data, "generation_config.json")


@dataclass(frozen=True)
class CodecDecoderConfig:
    """`speech_tokenizer/config.json` `decoder_config`: codes -> 24 kHz waveform."""

    codebook_size: int = 2048
    hidden_size: int = 1024
    latent_dim: int = 1024
    max_position_embeddings: int = 8000
    rope_theta: float = 10000.0
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int | None = None
    attention_bias: bool = False
    sliding_window: int = 72
    intermediate_size: int = 3072
    hidden_act: str = "silu"
    layer_scale_initial_scale: float = 0.01
    rms_norm_eps: float = 1e-5
    num_hidden_layers: int = 8
    num_quantizers: int = 16
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)
    upsampling_ratios: tuple[int, ...] = (2, 2)
    decoder_dim: int = 1536
    codebook_dim: int = 512

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CodecDecoderConfig":
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return _from_dict(cls, data, "speech_tokenizer/config.json decoder_config")


@dataclass(frozen=True)
class CodecEncoderConfig:
    """`speech_tokenizer/config.json` `encoder_config`: a transformers MimiConfig (encoder half used)."""

    sampling_rate: int = 24000
    audio_channels: int = 1
    hidden_size: int = 512
    num_filters: int = 64
    num_residual_layers: int = 1
    upsampling_ratios: tuple[int, ...] = (8, 6, 5, 4)
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "constant"
    compress: int = 2
    codebook_size: int = 2048
    codebook_dim: int = 256
    num_quantizers: int = 32
    num_semantic_quantizers: int = 1
    vector_quantization_hidden_dimension: int = 256
    num_hidden_layers: int = 8
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: int | None = None
    hidden_act: str = "gelu"
    max_position_embeddings: int = 8000
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int = 250
    layer_scale_initial_scale: float = 0.01
    attention_bias: bool = False
    use_conv_shortcut: bool = False
    frame_rate: float | None = None

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CodecEncoderConfig":
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return _from_dict(cls, data, "speech_tokenizer/config.json encoder_config")


@dataclass(frozen=True)
class SpeechTokenizerConfig:
    """`speech_tokenizer/config.json` (`model_type` "qwen3_tts_tokenizer_12hz")."""

    encoder_config: CodecEncoderConfig
    decoder_config: CodecDecoderConfig
    encoder_valid_num_quantizers: int = 16
    input_sample_rate: int = 24000
    output_sample_rate: int = 24000
    decode_upsample_rate: int = 1920
    encode_downsample_rate: int = 1920

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpeechTokenizerConfig":
        data = dict(data)
        if data.get("model_type", "qwen3_tts_tokenizer_12hz") != "qwen3_tts_tokenizer_12hz":
            raise CheckpointError(
                f"speech_tokenizer/config.json: model_type is {data.get('model_type')!r}, "
                "expected 'qwen3_tts_tokenizer_12hz'"
            )
        data["encoder_config"] = CodecEncoderConfig.from_dict(data.get("encoder_config") or {})
        data["decoder_config"] = CodecDecoderConfig.from_dict(data.get("decoder_config") or {})
        return _from_dict(cls, data, "speech_tokenizer/config.json")


def read_json(path: Path) -> dict[str, Any]:
    """Read a checkpoint JSON file, turning every failure into a CheckpointError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from None
