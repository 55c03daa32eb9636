"""Tiny random official models and our modules loaded with the same weights (shared by the core tests)."""

from __future__ import annotations

import torch

from oracle import official
from qtts.config import TTSConfig
from qtts.models.talker import Talker
from qtts.testing.configs import tiny_tts_config


def official_model(variant: str = "custom_voice", mtp_projection: bool = True, seed: int = 0):
    """A tiny official `Qwen3TTSForConditionalGeneration` in eval mode with randomised norm weights."""
    official()
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**tiny_tts_config(variant, mtp_projection=mtp_projection)))
    with torch.no_grad():
        # Norm weights start at ones: randomise them so a misplaced norm cannot hide.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def our_config(variant: str = "custom_voice", mtp_projection: bool = True, size_tag: str | None = None) -> TTSConfig:
    data = tiny_tts_config(variant, mtp_projection=mtp_projection)
    if size_tag is not None:
        data["tts_model_size"] = size_tag
    return TTSConfig.from_dict(data)


def our_talker(model, config: TTSConfig) -> Talker:
    """Our Talker holding the official model's `talker.*` weights."""
    talker = Talker(config.talker_config)
    talker.load_state_dict(model.talker.state_dict(), strict=True)
    return talker.eval()


class Captured(Exception):
    """Raised by the capture hook to stop the official generate after the talker's inputs are known."""

    def __init__(self, kwargs):
        super().__init__("captured")
        self.kwargs = kwargs


def capture_talker_inputs(model, **generate_kwargs) -> dict:
    """Run the official `generate` up to its `talker.generate` call and return that call's kwargs
    (`inputs_embeds`, `attention_mask`, `trailing_text_hidden`, `tts_pad_embed`, ...)."""

    def hook(**kwargs):
        raise Captured(kwargs)

    original = model.talker.generate
    model.talker.generate = hook
    try:
        model.generate(**generate_kwargs)
    except Captured as captured:
        return captured.kwargs
    finally:
        model.talker.generate = original
    raise AssertionError("the official generate never called talker.generate")
