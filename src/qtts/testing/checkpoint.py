"""Write random-weight checkpoints in the exact official layout: tiny ones for tests, real-size for benchmarks.

Weights come from qtts's own modules (whose state_dict keys are the official names), filled from a seeded
generator with scales that keep activations finite through every layer, so that generated codes vary and
the decoder produces non-trivial audio.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..checkpoint import MODEL_FILE, SPEECH_TOKENIZER_DIR, build_empty
from ..config import SpeechTokenizerConfig, TTSConfig
from .configs import generation_config, tiny_speech_tokenizer_config, tiny_tts_config
from .tokenizer import qwen_vocabulary_files, write_qwen_tokenizer_files, write_tokenizer_files


def random_value(name: str, tensor: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random value for checkpoint tensor `name`, by the role its name and shape give it."""
    shape = tuple(tensor.shape)
    device = gen.device

    def normal(std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32, device=device) * std + mean

    leaf = name.rsplit(".", 1)[-1]
    if leaf == "cluster_usage":
        return torch.rand(shape, generator=gen, device=device) + 0.5
    if leaf == "initialized":
        return torch.ones(shape, device=device)
    if leaf in ("embed_sum", "embedding_sum"):
        return normal(1.0)
    if leaf in ("alpha", "beta"):  # SnakeBeta parameters are stored as logs
        return normal(0.1)
    if leaf in ("scale", "gamma"):  # LayerScale
        return normal(0.02, 0.1)
    if leaf == "bias":
        return normal(0.02)
    if "norm" in name and tensor.dim() == 1:
        return normal(0.1, 1.0)
    if tensor.dim() == 1:
        return normal(0.1)
    if "embedding" in name:
        return normal(1.0)
    fan_in = math.prod(shape[1:])
    gain = 0.5 if _CODEC_RESIDUAL_CONV.match(name) else 1.0
    return normal(gain / math.sqrt(fan_in))


# Each SnakeBeta adds up to 1/exp(beta) of energy, so at unit gain the decoder's 12 residual units grow the
# signal ~3x per block and >95% of the output clamps; half gain gives speech-like levels (std ~0.25).
_CODEC_RESIDUAL_CONV = re.compile(r"^decoder\.\d+\.block\.[234]\.conv[12]\.conv\.weight$")


def _random_state(module: torch.nn.Module, prefix: str, gen: torch.Generator, dtype: torch.dtype) -> dict:
    state = {}
    for key, value in module.state_dict().items():
        filled = random_value(key, value, gen)
        state[prefix + key] = filled.to(dtype if value.is_floating_point() else value.dtype).cpu().contiguous()
    return state


def write_checkpoint(
    folder: str | os.PathLike,
    tts_config: dict,
    speech_tokenizer_config: dict,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    qwen_vocabulary: bool = False,
) -> Path:
    """Write a complete checkpoint folder (configs, tokenizer files, weights) and return its path.

    `dtype` is the dtype of `model.safetensors` (released files are bf16); the speech tokenizer is
    always float32, as released. `device` is where the random numbers are drawn: "cuda" makes a
    real-size checkpoint in seconds. The same seed gives the same weights on the same device.
    `qwen_vocabulary`: the real Qwen vocabulary (`write_qwen_tokenizer_files`, for benchmarks: prompts of
    real length) instead of the small stand-in.
    """
    from ..models.codec_decoder import CodecDecoder
    from ..models.codec_encoder import CodecEncoder
    from ..models.speaker_encoder import SpeakerEncoder
    from ..models.talker import Talker

    if qwen_vocabulary:
        qwen_vocabulary_files()  # a missing package is said before minutes of writing weights, not after
    folder = Path(folder)
    (folder / SPEECH_TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    config = TTSConfig.from_dict(tts_config)
    speech = SpeechTokenizerConfig.from_dict(speech_tokenizer_config)
    gen = torch.Generator(device=device).manual_seed(seed)

    # Modules are built on the meta device: only their parameter names and shapes are needed.
    meta32 = dict(device="meta", dtype=torch.float32)
    talker = build_empty(lambda **kw: Talker(config.talker_config, **kw), **meta32)
    state = _random_state(talker, "talker.", gen, dtype)
    del talker
    if config.speaker_encoder_config is not None:
        spk = build_empty(lambda **kw: SpeakerEncoder(config.speaker_encoder_config, **kw), **meta32)
        state.update(_random_state(spk, "speaker_encoder.", gen, dtype))
    save_file(state, str(folder / MODEL_FILE), metadata={"format": "pt"})
    del state

    encoder = build_empty(
        lambda **kw: CodecEncoder(speech.encoder_config, speech.encoder_valid_num_quantizers, **kw), **meta32
    )
    decoder = build_empty(lambda **kw: CodecDecoder(speech.decoder_config, **kw), **meta32)
    codec_state = _random_state(encoder, "encoder.", gen, torch.float32)
    codec_state.update(_random_state(decoder, "decoder.", gen, torch.float32))
    save_file(codec_state, str(folder / SPEECH_TOKENIZER_DIR / MODEL_FILE), metadata={"format": "pt"})

    _write_json(folder / "config.json", tts_config)
    _write_json(folder / "generation_config.json", generation_config())
    _write_json(folder / SPEECH_TOKENIZER_DIR / "config.json", speech_tokenizer_config)
    _write_json(
        folder / SPEECH_TOKENIZER_DIR / "preprocessor_config.json",
        {"feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1, "sampling_rate": 24000,
         "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True},
    )
    (write_qwen_tokenizer_files if qwen_vocabulary else write_tokenizer_files)(folder)
    return folder


def write_tiny_checkpoint(
    folder: str | os.PathLike, variant: str, *, mtp_projection: bool = True, seed: int = 0
) -> Path:
    """A tiny random checkpoint of `variant` ("base", "custom_voice", "voice_design"), float32."""
    return write_checkpoint(
        folder, tiny_tts_config(variant, mtp_projection=mtp_projection), tiny_speech_tokenizer_config(), seed=seed
    )


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
