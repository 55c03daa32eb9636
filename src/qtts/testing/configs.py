"""config.json dictionaries in the official layout: tiny ones for tests, real-size ones for benchmarks.

The real-size values are the released checkpoints' (spec sections 2, 3, 6, 7, 8); the tiny ones keep every
id, rate and structural quirk (codec ids, 9 speakers, 32-level RVQ, 1920x upsampling) and shrink widths.
"""

from __future__ import annotations

import copy

VARIANTS = ("base", "custom_voice", "voice_design")
SIZES = ("0.6b", "1.7b")

LANGUAGE_IDS = {
    "english": 2050, "german": 2053, "spanish": 2054, "chinese": 2055, "japanese": 2058,
    "french": 2061, "korean": 2064, "russian": 2069, "italian": 2070, "portuguese": 2071,
}
DIALECT_IDS = {"sichuan_dialect": 2062, "beijing_dialect": 2074}
SPEAKER_IDS = {
    "aiden": 2861, "sohee": 2864, "ono_anna": 2873, "eric": 2875, "dylan": 2878,
    "uncle_fu": 3010, "ryan": 3061, "vivian": 3065, "serena": 3066,
}
SPEAKER_DIALECTS = {name: False for name in SPEAKER_IDS} | {"eric": "sichuan_dialect", "dylan": "beijing_dialect"}

CODEC_IDS = {
    "codec_pad_id": 2148, "codec_bos_id": 2149, "codec_eos_token_id": 2150, "codec_think_id": 2154,
    "codec_nothink_id": 2155, "codec_think_bos_id": 2156, "codec_think_eos_id": 2157,
}

GENERATION_CONFIG = {
    "do_sample": True, "repetition_penalty": 1.05, "temperature": 0.9, "top_p": 1.0, "top_k": 50,
    "subtalker_dosample": True, "subtalker_temperature": 0.9, "subtalker_top_p": 1.0,
    "subtalker_top_k": 50, "max_new_tokens": 8192,
}

# Widths per model: (talker hidden, talker FFN, talker layers, heads, kv heads, head_dim, text hidden,
#                    predictor hidden, predictor FFN, predictor layers, predictor heads/kv/head_dim)
_REAL = {
    "0.6b": dict(hidden=1024, ffn=3072, layers=28, heads=16, kv=8, head_dim=128, text_hidden=2048,
                 p_hidden=1024, p_ffn=3072, p_layers=5, p_heads=16, p_kv=8, p_head_dim=128,
                 mrope=[24, 20, 20], spk_channels=[512, 512, 512, 512, 1536], spk_scale=8,
                 spk_attn=128, spk_se=128),
    "1.7b": dict(hidden=2048, ffn=6144, layers=28, heads=16, kv=8, head_dim=128, text_hidden=2048,
                 p_hidden=1024, p_ffn=3072, p_layers=5, p_heads=16, p_kv=8, p_head_dim=128,
                 mrope=[24, 20, 20], spk_channels=[512, 512, 512, 512, 1536], spk_scale=8,
                 spk_attn=128, spk_se=128),
}
# Tiny: predictor narrower than the talker, like 1.7B, so small_to_mtp_projection is exercised;
# `mtp_projection=False` makes them equal, like 0.6B.
_TINY = dict(hidden=64, ffn=96, layers=2, heads=4, kv=2, head_dim=16, text_hidden=32,
             p_hidden=32, p_ffn=48, p_layers=2, p_heads=4, p_kv=2, p_head_dim=8,
             mrope=[4, 2, 2], spk_channels=[32, 32, 32, 32, 96], spk_scale=4, spk_attn=16, spk_se=16)


def _tts_config(dims: dict, variant: str, size_tag: str, *, tiny: bool) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    custom = variant == "custom_voice"
    talker = {
        "vocab_size": 3072,
        "hidden_size": dims["hidden"],
        "intermediate_size": dims["ffn"],
        "num_hidden_layers": dims["layers"],
        "num_attention_heads": dims["heads"],
        "num_key_value_heads": dims["kv"],
        "head_dim": dims["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000,
        "rope_scaling": {"rope_type": "default", "mrope_section": dims["mrope"], "interleaved": True},
        "attention_bias": False,
        "use_sliding_window": False,
        "num_code_groups": 16,
        "text_hidden_size": dims["text_hidden"],
        "text_vocab_size": 151936,
        "position_id_per_seconds": 13,
        **CODEC_IDS,
        "codec_language_id": dict(LANGUAGE_IDS, **(DIALECT_IDS if custom else {})),
        "spk_id": dict(SPEAKER_IDS) if custom else {},
        "spk_is_dialect": dict(SPEAKER_DIALECTS) if custom else {},
        "code_predictor_config": {
            "vocab_size": 2048,
            "hidden_size": dims["p_hidden"],
            "intermediate_size": dims["p_ffn"],
            "num_hidden_layers": dims["p_layers"],
            "num_attention_heads": dims["p_heads"],
            "num_key_value_heads": dims["p_kv"],
            "head_dim": dims["p_head_dim"],
            "hidden_act": "silu",
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000,
            "rope_scaling": None,
            "attention_bias": False,
            "use_sliding_window": False,
            "layer_types": ["full_attention"] * dims["p_layers"],
            "num_code_groups": 16,
        },
    }
    config = {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": size_tag,
        "tts_model_type": variant,
        "im_start_token_id": 151644,
        "im_end_token_id": 151645,
        "tts_pad_token_id": 151671,
        "tts_bos_token_id": 151672,
        "tts_eos_token_id": 151673,
        "assistant_token_id": 77091,
        "talker_config": talker,
    }
    if variant == "base":
        config["speaker_encoder_config"] = {
            "enc_dim": dims["hidden"],
            "sample_rate": 24000,
            # Released configs set only the two keys above; tiny ones must spell out the shrunk widths.
            **(
                {
                    "enc_channels": dims["spk_channels"],
                    "enc_res2net_scale": dims["spk_scale"],
                    "enc_attention_channels": dims["spk_attn"],
                    "enc_se_channels": dims["spk_se"],
                }
                if tiny
                else {}
            ),
        }
    return config


def tiny_tts_config(variant: str, *, mtp_projection: bool = True) -> dict:
    """A tiny `config.json` for `variant`; `mtp_projection` gives the 1.7B-style predictor projection."""
    dims = _TINY if mtp_projection else dict(_TINY, p_hidden=_TINY["hidden"], p_ffn=_TINY["ffn"])
    return _tts_config(dims, variant, "0b6", tiny=True)


def real_tts_config(variant: str, size: str) -> dict:
    """The released `config.json` content for `size` ("0.6b" or "1.7b") and `variant`."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    return _tts_config(_REAL[size], variant, "0b6" if size == "0.6b" else "1b7", tiny=False)


_REAL_CODEC = {
    "encoder": dict(hidden_size=512, num_filters=64, num_hidden_layers=8, intermediate_size=2048,
                    num_attention_heads=8, num_key_value_heads=8, head_dim=64, codebook_dim=256,
                    vector_quantization_hidden_dimension=256, upsample_groups=512),
    "decoder": dict(hidden_size=512, latent_dim=1024, intermediate_size=1024, num_attention_heads=16,
                    num_key_value_heads=16, head_dim=64, num_hidden_layers=8, decoder_dim=1536,
                    codebook_dim=512),
}
_TINY_CODEC = {
    "encoder": dict(hidden_size=32, num_filters=4, num_hidden_layers=1, intermediate_size=64,
                    num_attention_heads=2, num_key_value_heads=2, head_dim=16, codebook_dim=8,
                    vector_quantization_hidden_dimension=8, upsample_groups=32),
    "decoder": dict(hidden_size=16, latent_dim=32, intermediate_size=32, num_attention_heads=2,
                    num_key_value_heads=2, head_dim=8, num_hidden_layers=2, decoder_dim=32,
                    codebook_dim=16),
}


def _speech_tokenizer_config(dims: dict) -> dict:
    enc, dec = dims["encoder"], dims["decoder"]
    return {
        "architectures": ["Qwen3TTSTokenizerV2Model"],
        "model_type": "qwen3_tts_tokenizer_12hz",
        "encoder_valid_num_quantizers": 16,
        "input_sample_rate": 24000,
        "output_sample_rate": 24000,
        "decode_upsample_rate": 1920,
        "encode_downsample_rate": 1920,
        "encoder_config": {
            "model_type": "mimi",
            "sampling_rate": 24000,
            "frame_rate": 12.5,
            "audio_channels": 1,
            "num_residual_layers": 1,
            "upsampling_ratios": [8, 6, 5, 4],
            "kernel_size": 7,
            "last_kernel_size": 3,
            "residual_kernel_size": 3,
            "dilation_growth_rate": 2,
            "use_causal_conv": True,
            "pad_mode": "constant",
            "compress": 2,
            "trim_right_ratio": 1.0,
            "codebook_size": 2048,
            "num_quantizers": 32,
            "num_semantic_quantizers": 1,
            "use_conv_shortcut": False,
            "hidden_act": "gelu",
            "max_position_embeddings": 8000,
            "norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "sliding_window": 250,
            "layer_scale_initial_scale": 0.01,
            "attention_bias": False,
            "use_cache": False,
            "use_streaming": False,
            **enc,
        },
        "decoder_config": {
            "codebook_size": 2048,
            "max_position_embeddings": 8000,
            "rope_theta": 10000,
            "attention_bias": False,
            "sliding_window": 72,
            "hidden_act": "silu",
            "layer_scale_initial_scale": 0.01,
            "rms_norm_eps": 1e-5,
            "num_quantizers": 16,
            "upsample_rates": [8, 5, 4, 3],
            "upsampling_ratios": [2, 2],
            "attention_dropout": 0.0,
            # Present in released configs, unused by the decoder (spec 7.2).
            "num_semantic_quantizers": 1,
            "semantic_codebook_size": 4096,
            "vector_quantization_hidden_dimension": 512,
            **dec,
        },
    }


def tiny_speech_tokenizer_config() -> dict:
    return _speech_tokenizer_config(_TINY_CODEC)


def real_speech_tokenizer_config() -> dict:
    return _speech_tokenizer_config(_REAL_CODEC)


def generation_config() -> dict:
    return copy.deepcopy(GENERATION_CONFIG)
