"""qtts: a fast, faithful inference engine for Qwen3-TTS 12 Hz models."""

from .errors import CheckpointError, InputError, QttsError, VoiceError

__all__ = ["QttsError", "CheckpointError", "InputError", "VoiceError"]
__version__ = "0.1.0"
