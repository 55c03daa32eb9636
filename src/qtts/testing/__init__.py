"""Random-weight checkpoints in the official layout, for tests (tiny) and benchmarks (real size)."""

from .checkpoint import write_checkpoint, write_tiny_checkpoint
from .configs import (
    SIZES,
    VARIANTS,
    real_speech_tokenizer_config,
    real_tts_config,
    tiny_speech_tokenizer_config,
    tiny_tts_config,
)

__all__ = [
    "SIZES",
    "VARIANTS",
    "real_speech_tokenizer_config",
    "real_tts_config",
    "tiny_speech_tokenizer_config",
    "tiny_tts_config",
    "write_checkpoint",
    "write_tiny_checkpoint",
]
